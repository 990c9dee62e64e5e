"""Attacks on model delivery, each stopped by TUF or the downloader, each named after it.

In every case the active model stays what it was, and the refusal goes to the hub (an event
through the outbox) with its reason.
"""

import datetime as dt
import json
from pathlib import Path

from tuf.api.metadata import Metadata

from appliance.config import ModelsSection
from provisioning.repository import Expiry, new_signer
from tests.delivery.conftest import FAST, Harness


def _refused(h: Harness, code: str, kind: str = "model_refused") -> dict[str, object]:
    event = h.last(kind)
    assert event["code"] == code, event
    assert h.active() == "1.0.0"
    assert h.service.reported()["last_error"]["code"] == code
    return event


async def test_tampered_target_bytes_are_refused(harness: Harness, artifacts: dict[str, Path]):
    row = harness.sim.publish(artifacts["1.1.0"])
    real = harness.sim.storage.read(harness.sim.target_rel(row))
    assert real is not None
    harness.sim.served[harness.sim.target_rel(row)] = real[:-1] + bytes([real[-1] ^ 1])
    await harness.desire("1.1.0")
    await harness.settle()
    _refused(harness, "hash-mismatch")
    assert not harness.service.store.partial(str(row["sha256"])).exists()


def _latest_targets(h: Harness) -> str:
    ts = Metadata.from_bytes(h.sim.storage.read("metadata/timestamp.json") or b"")
    snap = Metadata.from_bytes(
        h.sim.storage.read(f"metadata/{ts.signed.snapshot_meta.version}.snapshot.json") or b""
    )
    return f"metadata/{snap.signed.meta['targets.json'].version}.targets.json"


async def test_tampered_targets_metadata_is_refused(harness: Harness, artifacts: dict[str, Path]):
    harness.sim.publish(artifacts["1.1.0"])
    rel = _latest_targets(harness)
    doc = json.loads(harness.sim.storage.read(rel) or b"")
    for info in doc["signed"]["targets"].values():
        info["length"] += 1  # an attacker's edit, signature left as it was
    harness.sim.served[rel] = json.dumps(doc).encode()
    await harness.desire("1.1.0")
    await harness.settle()
    _refused(harness, "bad-signature")


async def test_targets_metadata_signed_by_another_key_is_refused(
    harness: Harness, artifacts: dict[str, Path]
):
    harness.sim.publish(artifacts["1.1.0"])
    rel = _latest_targets(harness)
    md = Metadata.from_bytes(harness.sim.storage.read(rel) or b"")
    md.sign(new_signer())  # a valid signature, by a key the root does not trust for targets
    harness.sim.served[rel] = md.to_bytes()
    await harness.desire("1.1.0")
    await harness.settle()
    _refused(harness, "bad-signature")


async def test_metadata_rollback_is_refused(harness: Harness, artifacts: dict[str, Path]):
    old = harness.sim.files()  # the repository as the appliance saw it at 1.0.0
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    await harness.settle()
    assert harness.active() == "1.1.0"
    harness.sim.publish(artifacts["2.0.0"])
    harness.sim.served = {k: v for k, v in old.items() if k.startswith("metadata/")}
    await harness.desire("2.0.0")
    await harness.settle()
    event = harness.last("model_refused")
    assert event["code"] == "metadata-rollback"
    assert harness.active() == "1.1.0"


async def test_expired_timestamp_is_refused_freeze_attack(
    harness: Harness, artifacts: dict[str, Path]
):
    # A timestamp that expired before the appliance sees it: what a mirror frozen in time serves.
    harness.sim.repo.expiry = Expiry(timestamp=dt.timedelta(seconds=-1))
    harness.sim.publish(artifacts["1.1.0"])
    await harness.desire("1.1.0")
    await harness.settle()
    _refused(harness, "expired-metadata")


async def test_mix_and_match_metadata_is_refused(harness: Harness, artifacts: dict[str, Path]):
    old_targets = harness.sim.storage.read(_latest_targets(harness))
    harness.sim.publish(artifacts["1.1.0"])
    # Serve the older (validly signed) targets under the name the new snapshot asks for.
    harness.sim.served[_latest_targets(harness)] = old_targets or b""
    await harness.desire("1.1.0")
    await harness.settle()
    _refused(harness, "mix-and-match")


async def test_endless_data_is_cut_at_the_signed_length(
    harness: Harness, artifacts: dict[str, Path]
):
    row = harness.sim.publish(artifacts["1.1.0"])
    harness.sim.endless.add(harness.sim.target_rel(row))
    await harness.desire("1.1.0")
    await harness.settle()
    _refused(harness, "endless-data")
    assert not harness.service.store.partial(str(row["sha256"])).exists()


async def test_slow_retrieval_is_cut_by_the_deadline(tmp_path: Path, artifacts: dict[str, Path]):
    from tests.delivery.simulator import SimulatedRepository

    sim = SimulatedRepository()
    sim.publish(artifacts["1.0.0"])
    h = await Harness(
        tmp_path, sim, ModelsSection(**(FAST.model_dump() | {"download_deadline_s": 0.5}))
    ).start()
    await h.desire("1.0.0")
    await h.settle()
    h.events.clear()
    sim.publish(artifacts["1.1.0"])
    sim.chunk_delay_s = 0.2  # a few bytes now and then: never finishes on its own
    await h.desire("1.1.0")
    await h.settle()
    _refused(h, "deadline", kind="model_interrupted")
    await h.close()
