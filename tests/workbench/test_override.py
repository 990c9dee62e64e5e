""""Promote anyway": only where the site's policy allows it, confirmed against what the gate
said, recorded in the job and sent to the hub as a manual override."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from appliance.config import FinetuneSection
from tests.workbench.conftest import FAST_FINETUNE, Appliance, needs_chromium, sign_in
from tests.workbench.test_page import LABELS, message

pytestmark = [needs_chromium, pytest.mark.timeout(600)]


@pytest.fixture
def finetune_section() -> FinetuneSection:
    # A margin of 1.0 cannot be beaten: the gate keeps every candidate back.
    return FAST_FINETUNE.model_copy(
        update={"margin": 1.0, "allow_manual_promotion": True})


def outbox_events(app: Appliance, kind: str) -> list[dict[str, Any]]:
    """Events waiting for the hub (this appliance is not enrolled, so they all wait)."""
    return [e.data for e in app.daemon.outbox.pending() if e.kind == kind]


async def test_promote_anyway_after_the_gate_said_no(appliance: Appliance, browser: Any) -> None:
    await appliance.label_tiles(24, LABELS)
    page = await browser.new_page()
    await sign_in(page, appliance.base, appliance.token)
    await page.click('.tab[data-tab="train"]')
    await page.fill("#t-epochs", "2")
    await page.click("#t-start")
    await page.wait_for_selector("#t-result table.gate", timeout=300_000)
    assert await page.text_content("#t-result .decision") == "Decision: keep the current model"
    svc = appliance.daemon.finetune
    assert svc.jobs is not None
    [job] = await svc.db(svc.jobs.recent, 1)
    assert job["result"]["promotion"]["state"] == "not-promoted"

    # The policy is checked on every request: switched off, the API refuses with its reason.
    svc.config = svc.config.model_copy(update={"allow_manual_promotion": False})
    async with aiohttp.ClientSession(headers=appliance.auth) as s:
        url = f"{appliance.base}/v1/finetune/{job['id']}/promote"
        async with s.post(url, json={"override": True}) as r:
            body = await r.json()
            assert r.status == 403 and body["error"] == "policy"
        async with s.post(url, json={}) as r:
            assert r.status == 400 and "explicitly" in (await r.json())["reason"]
    svc.config = svc.config.model_copy(update={"allow_manual_promotion": True})

    await page.click("#t-override")
    said = str(await page.text_content("#confirm-text"))
    assert "The gate said: keep the current model" in said
    assert "does not beat the current model by the margin 1.000" in said
    assert "reported to the hub as a manual override" in said
    await page.click("#confirm-yes")
    await message(page, "#t-promotion", "promoted against the gate by engineer-laptop")

    [job] = await svc.db(svc.jobs.recent, 1)
    promotion = job["result"]["promotion"]
    assert promotion["state"] == "activated" and promotion["override"]["by"] == "engineer-laptop"
    assert appliance.daemon.model_provider.current().version == job["result"]["version"]
    [event] = outbox_events(appliance, "finetune_manual_override")
    assert event["job"] == job["id"] and event["by"] == "engineer-laptop"
    assert event["gate"] is False and event["reasons"] == job["result"]["comparison"]["reasons"]

    async with aiohttp.ClientSession(headers=appliance.auth) as s, \
            s.post(f"{appliance.base}/v1/finetune/{job['id']}/promote",
                   json={"override": True}) as r:
        body = await r.json()
        assert r.status == 409 and body["error"] == "not_overridable"
