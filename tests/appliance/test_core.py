"""The shared core's rules: config, topics, backoff, atomic writes, bundles."""

import random
import stat
import time
from pathlib import Path

import pytest

from appliance import identity, topics
from appliance.bundle import (
    BundlePayload,
    ClaimCredential,
    HubAddress,
    sign_bundle,
    verify_bundle,
)
from appliance.config import DaemonConfig, HubConfig, load_config
from appliance.errors import BundleError, ConfigError
from appliance.fsutil import atomic_write, write_secret
from appliance.mqtt import Backoff


def test_config_refuses_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text("[hub]\nbackoff_cap = 5\n")
    with pytest.raises(ConfigError, match="backoff_cap"):
        load_config(DaemonConfig, path, "SPOKE_")


def test_config_refuses_invalid_values(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text("[hub]\nbackoff_cap_s = -1\n")
    with pytest.raises(ConfigError, match="greater than 0"):
        load_config(DaemonConfig, path, "SPOKE_")


def test_config_refuses_a_loop_stall_threshold_of_zero(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text("[daemon]\nloop_stall_s = 0\n")
    with pytest.raises(ConfigError, match="loop_stall_s"):
        load_config(DaemonConfig, path, "SPOKE_")


def test_config_refuses_broken_toml(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text("[hub\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(DaemonConfig, path, "SPOKE_")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text("[health]\ninterval_s = 30\n")
    monkeypatch.setenv("SPOKE_HEALTH__INTERVAL_S", "5")
    monkeypatch.setenv("SPOKE_DAEMON__LOG_JSON", "true")
    config = load_config(DaemonConfig, path, "SPOKE_")
    assert config.health.interval_s == 5
    assert config.daemon.log_json is True


def test_missing_config_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(HubConfig, tmp_path / "absent.toml", "SPOKE_HUB_")
    assert config.broker.mode == "managed"
    assert config.hub.mqtt_port == 8883


def test_config_is_frozen() -> None:
    config = DaemonConfig()
    with pytest.raises(ValueError):
        config.hub.backoff_cap_s = 1  # type: ignore[misc]


def test_topics_refuse_wildcards_and_slashes() -> None:
    for bad in ("+", "#", "a/b", "", "x" * 65, "with space"):
        with pytest.raises(ValueError):
            topics.state(bad)


def test_topics_follow_the_contract() -> None:
    assert topics.available("dev-1") == "spoke/v1/dev-1/available"
    assert topics.command_result("dev-1", "ping") == "spoke/v1/dev-1/cmd/ping/result"
    assert topics.enroll_response("c1") == "spoke/v1/enroll/c1/response"
    assert topics.is_enroll_response("spoke/v1/enroll/c1/response")
    assert not topics.is_enroll_response("spoke/v1/dev-1/desired")
    assert topics.device_of("spoke/v1/dev-1/state") == "dev-1"
    assert topics.device_of("spoke/v1/enroll/request") is None


def test_backoff_grows_exponentially_with_jitter_and_respects_the_cap() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(60.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, "old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_secrets_are_written_0600(tmp_path: Path) -> None:
    write_secret(tmp_path / "k", b"secret")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def _payload(expires_at: float) -> BundlePayload:
    return BundlePayload(
        hub=HubAddress(host="h", mqtt_port=1, http_port=2),
        ca_certificate="ca",
        claim=ClaimCredential(id="c", token="t" * 20, certificate="c", key="k"),
        labels={"site": "a"},
        created_at=time.time(),
        expires_at=expires_at,
        max_uses=1,
    )


def test_bundle_round_trip_verifies() -> None:
    key = identity.generate_signing_key()
    data = sign_bundle(_payload(time.time() + 60), key)
    assert verify_bundle(data, key.public_key()).labels == {"site": "a"}


def test_oversized_bundle_is_refused() -> None:
    key = identity.generate_signing_key()
    with pytest.raises(BundleError, match="larger than"):
        verify_bundle(b" " * (300 * 1024), key.public_key())


def test_device_id_is_derived_from_the_key() -> None:
    key = identity.generate_key()
    csr = identity.load_csr(identity.build_csr(key, {"cpu_count": 2}))
    assert identity.csr_common_name(csr) == identity.device_id_for(key.public_key())
    assert identity.csr_facts(csr) == {"cpu_count": 2}
