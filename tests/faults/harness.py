"""The fault harness: a hub and appliances in network namespaces, a ledger of what each was
sent, and the reconciliation every scenario ends with.

The reconciliation is the books at the end of a bad day:

- every image answered 202 has a result or a stated failure (and no image file is on disk
  without its row);
- every processed image's detection event reached the hub exactly once (one event per image
  and model version; its id is derived from both), and the appliance's outbox is empty with
  nothing dropped;
- the hub's stores hold no duplicate event ids, and each alert alternates raised/cleared
  (a restart must not raise again an alert that is still raised);
- the active model is verified: a store entry whose sha256 is one the hub published, or a
  fine-tune this appliance promoted itself, signed by a key the hub's registry says it
  certified for this device (before or after a renewal), whose card is the signed one and
  whose parent is itself verified;
- the identity is whole: key, certificate and CA on disk, the certificate's key is the device
  key, it was issued by the hub's CA for this device id;
- ``/healthz`` answers and the hub sees the device online again after the fault ends. The
  time it took is measured and reported against the 30 s target (``RECOVERY_TARGET_S``); the
  test itself waits up to ``RECOVERY_WAIT_S``, because timings on a shared CI machine are not
  something a test may assert.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import IdentityError
from appliance.identity import public_key_sha256
from daemon.finetune.promote import sha256_of, verify_signed
from tests.delivery.conftest import make_artifact
from tests.finetune.conftest import make_parent
from tests.support.fleet import Appliance, Hub, cli, wait_for
from tests.support.netns import Fabric
from tests.uplink.conftest import image_bytes

RECOVERY_TARGET_S = 30.0
RECOVERY_WAIT_S = 240.0
DRAIN_TIMEOUT_S = 180.0

APPLIANCE_ENV = {
    "SPOKE_MODELS__BACKEND": "onnxruntime",
    "SPOKE_UPLINK__BACKEND": "onnxruntime",
    "SPOKE_MODELS__GATE_QUIET_S": "1",
    "SPOKE_MODELS__RETRY_INITIAL_S": "0.5",
    "SPOKE_MODELS__RETRY_CAP_S": "2",
    "SPOKE_MODELS__RECONCILE_INTERVAL_S": "5",
    "SPOKE_UPLINK__WORKERS": "1",
    # Short enough that a cut hub link raises and clears the alert (events through the outbox).
    "SPOKE_HEALTH__HUB_UNREACHABLE_RAISE_S": "10",
    "SPOKE_HEALTH__HUB_UNREACHABLE_CLEAR_S": "5",
    # A fine-tune that learns anything is promoted (the parent 1.1.0 predicts no label).
    "SPOKE_FINETUNE__MARGIN": "0",
    "SPOKE_FINETUNE__MAX_LABEL_DROP": "1",
    "SPOKE_FINETUNE__NICENESS": "5",
}
#: The generated site whose labeled tiles a fine-tune learns from.
FINETUNE_SITE = 31
#: The events that end a fine-tune job at the hub (daemon/finetune/service.py ``_finish``).
FINETUNE_OUTCOMES = ("finetune_finished", "finetune_failed", "finetune_cancelled")

POLICY = """
[[rule]]
name = "all"
selector = "site=faults"
model = "crack-vit"
version = "=={version}"
"""


def fleet_artifacts(root: Path) -> dict[str, Path]:
    """The two published versions of ``crack-vit``: 1.0.0 a random tiny model, 1.1.0 one whose
    head predicts no label (held-out macro-F1 near 0), so a fine-tune on site samples beats it
    and is promoted: the books then meet a locally promoted model."""
    return {"1.0.0": make_artifact(root, "1.0.0", seed=0),
            "1.1.0": make_parent(root / "crack-vit-1.1.0", "1.1.0")}


def site_samples(root: Path) -> Path:
    """32 labeled 32-px tiles of ``FINETUNE_SITE`` (labels.csv + PNGs), for ``spoke samples
    import``."""
    from models.data.dataset import write_tiles

    out = root / "site-samples"
    if not (out / "labels.csv").exists():
        write_tiles(out, FINETUNE_SITE, 32, size=32)
    return out


@dataclass
class Books:
    """What one reconciliation found, for the report table."""

    scenario: str
    images_accepted: int = 0
    images_done: int = 0
    images_failed: int = 0
    images_lost: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    events_expected: int = 0
    events_at_hub: int = 0
    events_missing: list[str] = field(default_factory=list)
    events_duplicated: list[str] = field(default_factory=list)
    alert_repeats: list[str] = field(default_factory=list)
    outbox_left: int = 0
    outbox_dropped: int = 0
    model_ok: bool = False
    identity_ok: bool = False
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.images_lost:
            out.append(f"{len(self.images_lost)} images answered 202 have no result")
        if self.orphan_files:
            out.append(f"image files without a row: {self.orphan_files[:3]}")
        if self.events_missing:
            out.append(f"{len(self.events_missing)} detection events never reached the hub")
        if self.events_duplicated:
            out.append(f"duplicated event ids at the hub: {self.events_duplicated[:3]}")
        if self.alert_repeats:
            out.append(f"alerts raised or cleared twice in a row: {self.alert_repeats[:3]}")
        if self.outbox_left or self.outbox_dropped:
            out.append(f"outbox: {self.outbox_left} left, {self.outbox_dropped} dropped")
        if not self.model_ok:
            out.append("the active model is not the verified published one")
        if not self.identity_ok:
            out.append("the identity is not whole")
        if self.recovery_s is None:
            out.append("never recovered")
        return out

    def row(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "accepted": self.images_accepted,
                "done": self.images_done, "failed": self.images_failed,
                "lost": len(self.images_lost), "events": self.events_at_hub,
                "events_expected": self.events_expected,
                "duplicated": len(self.events_duplicated), "recovery_s": self.recovery_s,
                "recovery_target_met": self.recovery_s is not None
                and self.recovery_s < RECOVERY_TARGET_S, "notes": self.notes}


class Box:
    """One appliance of the fault fleet, with its token and the ids it answered 202 for."""

    def __init__(self, appliance: Appliance, token: str) -> None:
        self.appliance = appliance
        self.token = token
        self.accepted: list[str] = []
        self.refused: Counter[int] = Counter()
        self.device_id = ""
        self.seed = 0

    def post(self, width: int = 96, height: int = 72) -> tuple[int, Any]:
        """One fresh image; a 202 goes into the ledger, anything else is counted."""
        self.seed += 1
        data = image_bytes(width, height, seed=hash((self.device_id, self.seed)) % 2**32,
                           fmt="JPEG")
        status, body = self.appliance.api("/v1/images?mission=faults", self.token, data,
                                          "image/jpeg")
        if status == 202:
            self.accepted.append(body["id"])
        else:
            self.refused[status] += 1
        return status, body

    def burst(self, count: int, threads: int = 4) -> None:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: self.post(), range(count)))

    def healthy(self) -> bool:
        return self.appliance.api("/healthz", timeout=3)[0] == 200

    def log_lines(self, words: tuple[str, ...], last: int = 25) -> str:
        """The daemon log's last ``last`` lines that name one of ``words``: what a scenario
        that timed out shows of the box's side."""
        process = self.appliance.process
        if process is None:
            return "(the daemon is not running)"
        lines = [line for line in process.output().splitlines() if any(w in line for w in words)]
        return "\n".join(lines[-last:]) or "(no such line in the daemon log)"


class Uplink:
    """A steady drone: one image every ``period_s`` until stopped."""

    def __init__(self, box: Box, period_s: float = 0.5) -> None:
        self.box = box
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.box.post()

    def __enter__(self) -> Uplink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class FaultFleet:
    """A hub (managed broker, private address) and ``size`` appliances, each in a namespace,
    all on the published model ``crack-vit`` at ``version``."""

    def __init__(self, root: Path, fabric: Fabric, artifacts: dict[str, Path],
                 size: int = 1, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = APPLIANCE_ENV | (env or {})
        self.fabric = fabric
        self.artifacts = artifacts
        self.hub = Hub(root, public_host=fabric.hub_addr, bind_host=fabric.hub_addr)
        self.published: dict[str, str] = {}  # version -> sha256
        self.version = "1.0.0"
        self.boxes: list[Box] = []
        self.size = size

    def start(self) -> FaultFleet:
        self.hub.start()
        self.publish(self.version)
        bundle = self.hub.bundle(self.root / "faults.spoke", "--max-uses", str(self.size * 2),
                                 labels="site=faults")
        for i in range(self.size):
            appliance = Appliance(self.root, self.hub, f"box{i}", link=self.fabric.link())
            token = cli("spoke", "tokens", "create", "--state-dir", str(appliance.state_dir),
                        "--name", "drone").stdout.strip()
            box = Box(appliance, token)
            appliance.start(bundle, env=self.env)
            self.boxes.append(box)
        for box in self.boxes:
            box.device_id = box.appliance.wait_enrolled(120)
        for box in self.boxes:
            self.hub.wait_model(box.device_id, self.version, timeout=180)
        return self

    def enroll_extra(self, name: str) -> tuple[str, Path]:
        """Enroll one more device and stop it: its id and identity directory (a real device
        certificate for a test client)."""
        appliance = Appliance(self.root, self.hub, name, link=self.fabric.link())
        appliance.start(self.hub.bundle(self.root / f"{name}.spoke", labels="site=extra"),
                        env=self.env)
        try:
            device_id = appliance.wait_enrolled(120)
        finally:
            appliance.stop()
        return device_id, appliance.state_dir / "identity"

    def refused_at_hub(self) -> float:
        """``spoke_hub_messages_refused_total`` over all labels, from the hub's /metrics."""
        url = f"https://{self.fabric.hub_addr}:{self.hub.http_port}/metrics"
        text = requests.get(url, verify=str(self.hub.home / "ca" / "ca.crt"), timeout=10,
                            headers={"Authorization": f"Bearer {self.hub.operator_token()}"}).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("spoke_hub_messages_refused_total{"))

    def publish(self, version: str) -> None:
        row = self.hub.publish(self.artifacts[version])
        self.published[version] = row["sha256"]
        self.hub.apply_policy(POLICY.format(version=version))
        self.version = version

    def start_finetune(self, box: Box) -> str:
        """Import the site's labeled tiles and queue a fine-tune (linear probe) on ``box``, as
        an engineer on site would (``spoke samples import``, ``spoke finetune start``); the
        job's id."""
        box.appliance.run("samples", "import", str(site_samples(self.root)), "--json")
        job = json.loads(box.appliance.run("finetune", "start", "--method", "linear",
                                           "--epochs", "40", "--json"))
        return str(job["id"])

    def finetune_outcome(self, box: Box, job: str) -> dict[str, Any] | None:
        """The ``finetune_finished`` (or ``_failed``/``_cancelled``) event of ``job`` at the
        hub, once it is there."""
        for event in self.hub.events(box.device_id, limit=1000):
            if event["kind"] in FINETUNE_OUTCOMES and event["data"].get("job") == job:
                return dict(event)
        return None

    def degrade(self, box: Box, loss: float = 0.3, jitter_ms: int = 500) -> list[str]:
        """Loss and jitter on the box's link (``Link.degrade``; the jitter relay, where netem
        is missing, carries its MQTT and repository connections); what was applied."""
        assert box.appliance.link is not None
        return box.appliance.link.degrade(
            loss, jitter_ms, (self.fabric.hub_addr, [self.hub.mqtt_port, self.hub.http_port]))

    def restart(self, box: Box, env: dict[str, str] | None = None) -> None:
        box.appliance.stop()
        box.appliance.start(env=self.env | (env or {}))

    def close(self) -> None:
        for box in self.boxes:
            box.appliance.stop()
        self.hub.stop()

    # -- the books -----------------------------------------------------------------------

    def wait_recovered(self, since: float, boxes: list[Box] | None = None) -> float:
        """Seconds from ``since`` (the fault's end) until every box answers /healthz and the
        hub sees it online; fails past ``RECOVERY_WAIT_S``."""
        boxes = boxes if boxes is not None else self.boxes

        def green() -> bool:
            return all(b.healthy() for b in boxes) and all(
                self.hub.availability(b.device_id) == "online" for b in boxes)

        wait_for(green, RECOVERY_WAIT_S, "health to be green again")
        return round(time.monotonic() - since, 1)

    def reconcile(self, scenario: str, recovery_s: float | None,
                  boxes: list[Box] | None = None) -> Books:
        """Wait for the queues to drain, then check the books (see the module docstring)."""
        boxes = boxes if boxes is not None else self.boxes
        books = Books(scenario, recovery_s=recovery_s)
        hub_ids: Counter[str] = Counter()
        for box in boxes:
            rows = self._drain(box)
            books.images_accepted += len(box.accepted)
            for image_id in box.accepted:
                row = rows.get(image_id)
                if row is None or row["status"] not in ("done", "failed"):
                    books.images_lost.append(image_id)
                elif row["status"] == "failed":
                    books.images_failed += 1
                    assert row["reason"], f"{image_id} failed without a stated reason"
                else:
                    books.images_done += 1
            books.orphan_files += self._orphans(box, rows)
            # Every processed image ever (earlier scenarios too) is checked; the counts in the
            # books are this scenario's images.
            expected = {(image_id, row["model_version"]) for image_id, row in rows.items()
                        if row["status"] == "done"}
            mine = {(i, rows[i]["model_version"]) for i in box.accepted
                    if (rows.get(i) or {}).get("status") == "done"}
            books.events_expected += len(mine)
            if box.refused:
                books.notes.append("not accepted: " + ", ".join(
                    f"{n}x {status or 'no answer'}" for status, n in sorted(box.refused.items())))
            left, dropped = wait_for(functools.partial(self._outbox_empty, box),
                                     DRAIN_TIMEOUT_S, "the outbox to drain")
            books.outbox_left += left
            books.outbox_dropped += dropped
            events = self.hub.events(box.device_id, limit=1_000_000)
            hub_ids.update(e["id"] for e in events)
            per_image = Counter((e["data"]["image"], e["data"]["model"]["version"])
                                for e in events if e["kind"] == "detection")
            books.events_at_hub += sum(1 for key in mine if per_image[key] == 1)
            books.events_missing += sorted(i for i, _ in expected - set(per_image))
            books.events_duplicated += sorted(i for (i, _), n in per_image.items() if n > 1)
            books.alert_repeats += _alert_repeats(events)
            books.model_ok = self._model_verified(box)
            books.identity_ok = self._identity_whole(box)
        books.events_duplicated += [i for i, n in hub_ids.items() if n > 1]
        return books

    def _drain(self, box: Box) -> dict[str, dict[str, Any]]:
        """Every accepted image finished (or the timeout says which did not)."""
        def finished() -> dict[str, dict[str, Any]] | None:
            rows = _results(box)
            pending = [i for i in box.accepted
                       if (rows.get(i) or {}).get("status") not in ("done", "failed")]
            return rows if not pending else None

        try:
            return wait_for(finished, DRAIN_TIMEOUT_S, "accepted images to be processed")
        except AssertionError:
            return _results(box)

    @staticmethod
    def _orphans(box: Box, rows: dict[str, dict[str, Any]]) -> list[str]:
        images = box.appliance.state_dir / "uplink" / "images"
        return [p.name for p in images.glob("*/*") if p.name not in rows]

    @staticmethod
    def _outbox_empty(box: Box) -> tuple[int, int] | None:
        left = box.appliance.query("outbox.db", "SELECT COUNT(*) FROM outbox")[0][0]
        dropped = box.appliance.query(
            "outbox.db", "SELECT value FROM outbox_stats WHERE name = 'dropped'")
        return None if left else (left, dropped[0][0] if dropped else 0)

    def _model_verified(self, box: Box) -> bool:
        models = box.appliance.models()
        active = models.get("active") or {}
        return verified_entry(box.appliance.state_dir / "models" / "store",
                              str(active.get("sha256")), models["entries"], self.published,
                              certified_keys(self.hub.home / "registry.db", box.device_id))

    def _identity_whole(self, box: Box) -> bool:
        ident = box.appliance.state_dir / "identity"
        try:
            cert = x509.load_pem_x509_certificate((ident / "device.crt").read_bytes())
            key = serialization.load_pem_private_key((ident / "device.key").read_bytes(), None)
            ca = x509.load_pem_x509_certificate((ident / "ca.crt").read_bytes())
            meta = json.loads((ident / "identity.json").read_text())
        except (OSError, ValueError):
            return False
        same_key = cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        return (same_key and cn == box.device_id == meta.get("device_id")
                and cert.issuer == ca.subject)


def certified_keys(registry_path: Path, device_id: str) -> dict[str, float | None]:
    """Every key the hub's CA certified for ``device_id`` (sha256 of the public key) and when
    the hub retired that certificate (None while it is current), from the hub's registry."""
    from provisioning.registry import Registry

    registry = Registry(registry_path)
    try:
        return {c.key_sha256: c.retired_at for c in registry.certs_of(device_id)}
    finally:
        registry.close()


def verified_entry(store: Path, sha: str, entries: list[dict[str, Any]],
                   published: dict[str, str], device_keys: dict[str, float | None],
                   seen: frozenset[str] = frozenset()) -> bool:
    """Whether the model store entry ``sha`` is verified: one the hub published (``published``:
    version -> sha256 of ``crack-vit``), or a fine-tune this appliance promoted itself: signed
    by a key the hub certified for this device (``device_keys``, see ``certified_keys``) while
    that key's certificate was not yet retired, so a fine-tune signed before a renewal with a
    new key still counts; the signed sha256 and card are the entry's, and its parent
    (``entries``: the store's entries) is verified in turn."""
    try:
        meta = json.loads((store / sha / "target.json").read_text())
    except (OSError, ValueError):
        return False
    if sha in published.values():
        return True
    if meta.get("origin") != "finetune" or sha in seen:
        return False
    try:
        statement = verify_signed(meta["signed"])  # by the key it names, which is its signer's
        key = serialization.load_pem_public_key(str(meta["signed"]["public_key"]).encode())
        card = sha256_of(store / sha / "card.json")
    except (IdentityError, KeyError, TypeError, ValueError, OSError):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    key_sha = public_key_sha256(key)
    if key_sha not in device_keys:
        return False
    retired = device_keys[key_sha]
    if retired is not None and float(statement.get("made_at", retired)) >= retired:
        return False  # signed after the hub had retired that key's certificate
    if (statement["sha256"], statement["card_sha256"]) != (sha, card):
        return False
    name, _, version = str(statement["parent"]).partition("@")
    if name == "crack-vit" and version in published:
        return True
    return any(verified_entry(store, str(m["sha256"]), entries, published, device_keys,
                              seen | {sha})
               for m in entries if (m.get("name"), m.get("version")) == (name, version))


def _alert_repeats(events: list[dict[str, Any]]) -> list[str]:
    """Alerts whose state did not alternate at the hub, in the order the hub received them."""
    last: dict[tuple[str, str], str] = {}
    repeats = []
    for e in sorted((e for e in events if e["kind"] == "alert"), key=lambda e: e["received_at"]):
        key, state = (e["data"]["alert"], e["data"]["subject"]), e["data"]["state"]
        if last.get(key) == state:
            repeats.append(f"{key[0]}/{key[1]} {state}")
        last[key] = state
    return repeats


def _results(box: Box) -> dict[str, dict[str, Any]]:
    """The appliance's result rows, read from its database (works while the API is down)."""
    return {r["id"]: dict(r) for r in box.appliance.query(
        "uplink/results.db", "SELECT id, status, reason, model_name, model_version FROM images")}
