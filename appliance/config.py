"""Typed config: one TOML file, environment overrides, unknown keys refused, frozen after load.

An environment variable ``<PREFIX><SECTION>__<KEY>`` overrides ``[section] key`` in the file,
for example ``SPOKE_HUB__HEARTBEAT_INTERVAL_S=5``. Values from the environment are parsed as
TOML values when they can be (numbers, booleans), else taken as strings.
"""

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonSection(Section):
    log_json: bool = False
    log_level: str = "info"
    stop_timeout_s: float = Field(10.0, gt=0)
    # The event loop not running for this long is logged with its stack (daemon/loopwatch.py).
    loop_stall_s: float = Field(10.0, gt=0)


class HubLinkSection(Section):
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_cap_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    enroll_timeout_s: float = Field(30.0, gt=0)
    # Renew once this share of the certificate's lifetime has passed; a new key unless false.
    renew_at_share: float = Field(2 / 3, gt=0, lt=1)
    renew_new_key: bool = True
    renew_retry_s: float = Field(300.0, gt=0)
    # How the device key is kept at rest (docs/IDENTITY.md): "tpm" sealed by the box's TPM,
    # "file" a 0600 PEM; "auto" the TPM where there is one.
    key_store: Literal["auto", "tpm", "file"] = "auto"
    # The TPM as tpm2-tools name it (e.g. "device:/dev/tpmrm0"); empty: the tools' default.
    tpm_device: str = ""


class HealthSection(Section):
    """The ``[health]`` config section: collection interval and alert thresholds.

    Every collection is also the heartbeat the hub sees on ``spoke/v1/{device}/health``.
    """

    interval_s: float = Field(30.0, gt=0)
    disk_used_raise_ratio: float = Field(0.90, gt=0, le=1)
    disk_used_clear_ratio: float = Field(0.85, gt=0, le=1)
    memory_available_raise_ratio: float = Field(0.10, ge=0, lt=1)
    memory_available_clear_ratio: float = Field(0.15, gt=0, le=1)
    # None: the GPU's own slowdown threshold, or the default where NVML does not report one.
    gpu_temperature_limit_celsius: float | None = None
    gpu_temperature_default_limit_celsius: float = 85.0
    gpu_temperature_hysteresis_celsius: float = Field(5.0, gt=0)
    gpu_throttle_reasons: tuple[str, ...] = (
        "hw_slowdown",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
    )
    gpu_throttle_clear_after_samples: int = Field(3, ge=1)
    gpu_ecc_uncorrected_raise_count: int = Field(1, ge=1)
    hub_unreachable_raise_s: float = Field(900.0, gt=0)
    hub_unreachable_clear_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _bands(self) -> "HealthSection":
        """A clear threshold on the wrong side of its raise threshold would flap forever."""
        if self.disk_used_clear_ratio >= self.disk_used_raise_ratio:
            raise ValueError("disk_used_clear_ratio must be below disk_used_raise_ratio")
        if self.memory_available_clear_ratio <= self.memory_available_raise_ratio:
            raise ValueError(
                "memory_available_clear_ratio must be above memory_available_raise_ratio"
            )
        if self.hub_unreachable_clear_s >= self.hub_unreachable_raise_s:
            raise ValueError("hub_unreachable_clear_s must be below hub_unreachable_raise_s")
        return self


class ApiSection(Section):
    """The daemon's HTTP server: uplink API, /metrics, status page."""

    listen: str = Field("0.0.0.0:8443", pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$")
    # HTTPS always, unless plain HTTP is asked for by name (the status page then says so):
    # these files, else the hub-issued server certificate, else a self-signed one.
    tls_cert: str | None = None
    tls_key: str | None = None
    plain_http: bool = False
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # The read-only status page on ``/`` and ``/status.json`` (daemon/web/status.py).
    status_page: bool = True


class UplinkSection(Section):
    """The drone uplink: ingestion queue, dynamic batching, image retention, watch folder.

    ``queue_depth`` bounds images accepted but not yet processed (past it: 429). Tiles of
    concurrent images are pooled into batches of at most ``max_batch_tiles``, waiting at most
    ``max_wait_ms`` for more. Stored images are deleted oldest first past ``retention_max_bytes``
    or ``retention_max_age_s`` once processed. ``export`` says what of an image may leave the
    box with its event: ``none`` (default: labels and numbers only) or a small ``thumbnail``.
    A watch-folder file is taken once unchanged for ``watch_stable_s``; if refused, it is moved
    to ``failed/`` only once unchanged for ``watch_incomplete_s`` (a stalled copy may resume).
    """

    queue_depth: int = Field(64, ge=1, le=100_000)
    workers: int = Field(2, ge=1, le=64)
    max_batch_tiles: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(10.0, ge=0, le=10_000)
    max_pixels: int = Field(100_000_000, gt=0)
    tile_overlap: int | None = Field(None, ge=0)
    downscale: int = Field(1, ge=1, le=64)
    backend: str = Field("auto", pattern="^(auto|torch|onnxruntime|tensorrt)$")
    retention_max_bytes: int = Field(20 * 1024**3, gt=0)
    retention_max_age_s: float = Field(30 * 86400.0, gt=0)
    watch_dir: str | None = None
    watch_interval_s: float = Field(1.0, gt=0)
    watch_stable_s: float = Field(2.0, ge=0)
    watch_incomplete_s: float = Field(60.0, ge=0)
    export: str = Field("none", pattern="^(none|thumbnail)$")


class ModelsSection(Section):
    """The ``[models]`` section: the model reconciler, its download bounds and health gate."""

    reconcile_interval_s: float = Field(300.0, gt=0)
    download_deadline_s: float = Field(1800.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    retry_initial_s: float = Field(5.0, gt=0)
    retry_cap_s: float = Field(300.0, gt=0)
    backend: str = Field("auto", pattern="^(auto|torch|onnxruntime|tensorrt)$")
    # The health gate commits a new model after N good inferences or T seconds without errors.
    gate_good_inferences: int = Field(20, ge=1)
    gate_quiet_s: float = Field(120.0, gt=0)
    gate_max_errors: int = Field(1, ge=1)
    keep_versions: int = Field(3, ge=2)


class FinetuneSection(Section):
    """The ``[finetune]`` section: local fine-tuning jobs, their evaluation gate and limits.

    A candidate is promoted only if its macro-F1 on the held-out split beats the current
    model's by ``margin`` and no label loses more than ``max_label_drop`` F1. Jobs run in their
    own process at ``niceness`` with ``threads`` CPU threads (and ``gpu_memory_fraction`` of a
    GPU), for ``default_budget_s`` unless the job says otherwise. ``upload`` is the site's
    policy for the hub: ``none``, or ``weights`` (the trained head or adapters and the
    comparison, for review; never images).
    """

    margin: float = Field(0.01, ge=0, le=1)
    max_label_drop: float = Field(0.05, ge=0, le=1)
    held_out_fraction: float = Field(0.25, gt=0, lt=1)
    niceness: int = Field(10, ge=0, le=19)
    threads: int = Field(1, ge=1, le=256)
    gpu_memory_fraction: float = Field(0.5, gt=0, le=1)
    default_budget_s: float = Field(600.0, gt=0, le=86400)
    checkpoint_every_s: float = Field(15.0, gt=0)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    upload: str = Field("none", pattern="^(none|weights)$")
    #: Site policy: may an engineer promote a candidate the gate kept back ("promote anyway",
    #: logged and reported to the hub as a manual override)?
    allow_manual_promotion: bool = False


class OsSection(Section):
    """The ``[os]`` section: over-the-air OS updates (daemon/osupdate) and the boot health gate.

    ``reboot_window`` is local time ``HH:MM-HH:MM`` (it may wrap past midnight): a staged
    version is booted only then. ``hub_grace_s``: the health gate still passes when the hub
    was reachable within this long (a link outage alone must not roll an OS back)."""

    reboot_window: str = Field("02:00-05:00", pattern=r"^\d\d:\d\d-\d\d:\d\d$")
    download_deadline_s: float = Field(3600.0, gt=0)
    hub_grace_s: float = Field(900.0, gt=0)


class DaemonConfig(Section):
    daemon: DaemonSection = DaemonSection()
    hub: HubLinkSection = HubLinkSection()
    health: HealthSection = HealthSection()
    api: ApiSection = ApiSection()
    models: ModelsSection = ModelsSection()
    uplink: UplinkSection = UplinkSection()
    finetune: FinetuneSection = FinetuneSection()
    os: OsSection = OsSection()


class HubSection(Section):
    public_host: str = "localhost"
    bind_host: str = "0.0.0.0"
    mqtt_port: int = Field(8883, gt=0, lt=65536)
    http_port: int = Field(8443, gt=0, lt=65536)
    log_json: bool = False
    log_level: str = "info"
    #: Names this process among several serving one fleet: its MQTT session is its own.
    instance: str = Field("", pattern="^[a-z0-9-]{0,32}$")


class BrokerSection(Section):
    mode: str = Field("managed", pattern="^(managed|external)$")
    host: str = "localhost"
    port: int | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    mosquitto: str = "mosquitto"


class EnrollmentSection(Section):
    max_request_bytes: int = Field(64 * 1024, gt=0)
    # Fractions allowed: tests use lifetimes of a minute to watch renewals happen for real.
    device_cert_days: float = Field(825, gt=0)


class RepositorySection(Section):
    """The ``[repository]`` section: the hub's TUF model repository and desired-state rollout.

    Root keys are offline (only ``spoke-hub models init`` and root rotations use them); targets,
    snapshot and timestamp keys are online and the hub re-signs before they expire.
    """

    #: Where the public files live: empty (``H/repository/public``), ``file:///DIR`` or
    #: ``s3://BUCKET/PREFIX`` (with ``endpoint`` for a store that is not AWS S3).
    url: str = Field("", pattern=r"^$|^file:///.+|^s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?$")
    endpoint: str = Field("", pattern=r"^$|^https?://.+")
    region: str = "us-east-1"
    #: Where appliances download the repository, written into new bundles: empty is this
    #: hub's ``https://PUBLIC_HOST:HTTP_PORT/repository`` (devices and operators only); or the
    #: bucket's URL, or a CDN's in front of it.
    public_url: str = Field("", pattern=r"^$|^https?://[^\s]+$")
    root_keys: int = Field(1, ge=1, le=9)
    root_threshold: int = Field(1, ge=1)
    root_expiry_days: int = Field(365, gt=0)
    targets_expiry_days: int = Field(90, gt=0)
    snapshot_expiry_days: int = Field(7, gt=0)
    timestamp_expiry_s: float = Field(86400.0, gt=0)
    refresh_interval_s: float = Field(60.0, gt=0)
    rollout_interval_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _threshold(self) -> "RepositorySection":
        if self.root_threshold > self.root_keys:
            raise ValueError("root_threshold cannot exceed root_keys")
        return self


class RegistrySection(Section):
    """The ``[registry]`` section: the hub's database. Empty: SQLite in the hub's home; a
    ``postgresql://`` URL lets several hub processes serve one fleet."""

    url: str = ""

    @model_validator(mode="after")
    def _scheme(self) -> "RegistrySection":
        if self.url and not self.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("registry url must be sqlite:///PATH or postgresql://USER@HOST/DB")
        return self


class HubConfig(Section):
    hub: HubSection = HubSection()
    registry: RegistrySection = RegistrySection()
    broker: BrokerSection = BrokerSection()
    enrollment: EnrollmentSection = EnrollmentSection()
    repository: RepositorySection = RepositorySection()


C = TypeVar("C", bound=BaseModel)


def parse_value(raw: str) -> Any:
    """A TOML scalar (number, boolean, quoted string) if it parses as one, else the text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], prefix: str) -> None:
    for name, raw in os.environ.items():
        if not name.startswith(prefix) or "__" not in name[len(prefix) :]:
            continue
        section, key = name[len(prefix) :].lower().split("__", 1)
        data.setdefault(section, {})[key] = parse_value(raw)


def load_config(model: type[C], path: Path | None, env_prefix: str) -> C:
    """Read ``path`` (missing is fine: defaults), apply the environment, validate."""
    data: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    _apply_env(data, env_prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path else "config"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc
