"""Jobs end to end through the real routes and a real worker process."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.finetune.promote import verify_signed
from tests.finetune.conftest import Site


async def test_a_candidate_that_passes_the_gate_is_signed_and_activated(
    site: Site, site_tiles: Path
) -> None:
    await site.add_tiles(site_tiles)
    job = await site.start(method="linear", epochs=40)
    done = await site.wait(job["id"])
    assert done["status"] == "done", done
    result = done["result"]
    assert result["comparison"]["promote"] is True
    promotion = result["promotion"]
    assert promotion["state"] == "activated", promotion
    assert promotion["version"] == "1.0.1-ft.1"
    active = site.models.manager.current()
    assert active is not None and active.version == "1.0.1-ft.1"
    assert active.artifact.card.parent == "crack-vit@1.0.0"
    meta = site.models.store.meta(active.sha256)
    assert meta is not None and verify_signed(meta["signed"])["sha256"] == active.sha256
    assert site.models.store.journal().hold.action == "finetune"
    finished = site.last("finetune_finished")
    assert finished["promotion"]["state"] == "activated"
    assert finished["macro_f1_candidate"] > finished["macro_f1_current"]
    await site.settle_gate()
    assert site.models.store.journal().committed == active.sha256


async def test_the_comparison_is_stored_when_the_gate_refuses(site: Site, site_tiles: Path):
    """Also: a stored sample whose file went bad on disk is skipped and reported, not fatal."""
    site.service.config = replace_config(site.service.config, margin=1.0)
    await site.add_tiles(site_tiles)
    rotten = sorted((site.state / "finetune" / "samples").rglob("*.png"))[0]
    rotten.write_bytes(rotten.read_bytes()[:100])
    job = await site.start(method="linear", epochs=2)
    done = await site.wait(job["id"])
    assert done["status"] == "done"
    skipped = done["result"]["skipped"]
    assert [s["path"] for s in skipped] == [str(rotten)] and skipped[0]["reason"]
    assert done["result"]["comparison"]["promote"] is False
    assert done["result"]["promotion"]["state"] == "not-promoted"
    assert "does not beat" in done["result"]["promotion"]["reason"]
    assert site.models.manager.current().version == "1.0.0"
    assert site.last("finetune_finished")["gate"] is False


def replace_config(config, **changes):
    return config.model_copy(update=changes)


async def test_progress_is_streamed_as_server_sent_events(site: Site, site_tiles: Path):
    await site.add_tiles(site_tiles)
    job = await site.start(method="lora", epochs=2)
    resp = await site.client.get(f"/v1/finetune/{job['id']}/events", headers=site.auth)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    async for line in resp.content:
        text = line.decode().strip()
        if text.startswith("event: "):
            events.append(text.removeprefix("event: "))
        if text.startswith("data: ") and events[-1] == "end":
            final = json.loads(text.removeprefix("data: "))
            break
    assert events[0] == "progress" and events[-1] == "end"
    assert events.count("progress") >= 2
    assert final["status"] == "done"
    assert any(k == "finetune_progress" for k in site.kinds())
