"""The workbench in headless Chromium, driven for real: clicks, keys, taps and a drawn box.

Every check on the page is also checked where it lands: the sample store, the job store, the
model store of the real daemon behind it.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.site.shots import shot
from tests.workbench.conftest import VIEWPORTS, Appliance, Console, needs_chromium, sign_in

pytestmark = [needs_chromium, pytest.mark.timeout(600)]
LABELS = ["crack", "spallation", "efflorescence", "exposed_bars", "corrosion_stain"]


async def saved(page: Any, index: int) -> None:
    await page.wait_for_selector(f'#grid .tile[data-index="{index}"].reviewed')


async def message(page: Any, selector: str, text: str) -> str:
    """The text of ``selector`` once it says ``text`` (polled by Playwright, not by an
    evaluated string: the page's CSP forbids eval, rightly)."""
    from playwright.async_api import expect

    await expect(page.locator(selector)).to_contain_text(text, timeout=30_000)
    return str(await page.text_content(selector))


async def by_origin(app: Appliance) -> dict[str, dict[str, Any]]:
    out = {}
    for s in await app.samples():
        origin = s["origin"]
        out[f"{origin['image_id']}:{','.join(map(str, origin['box']))}"] = s
    return out


async def test_label_correct_undo_and_draw_a_box(appliance: Appliance, browser: Any) -> None:
    page = await browser.new_page()
    console = Console(page)
    await sign_in(page, appliance.base, appliance.token)
    assert "signed in as engineer-laptop" in await page.text_content("#who")
    tiles = page.locator("#grid .tile")
    first = await tiles.nth(0).get_attribute("data-key")
    assert await tiles.nth(0).get_attribute("class") and "uncertain" in str(
        await tiles.nth(0).get_attribute("class"))  # uncertain tiles come first

    # Label: tap the tile, "no defect" clears the model's guess, 1 is crack, Enter saves.
    await tiles.nth(0).click()
    for key in ("0", "1", "Enter"):
        await page.keyboard.press(key)
    await saved(page, 0)
    stored = await by_origin(appliance)
    assert stored[first]["labels"] == ["crack"]
    sample_id = stored[first]["id"]
    assert "crack 1" in await page.text_content("#counts")

    # Correct it: back to the tile (arrow), add spallation; the same sample is relabeled.
    await page.keyboard.press("ArrowLeft")
    for key in ("2", "Enter"):
        await page.keyboard.press(key)
    await message(page, "#msg", "saved: crack, spallation")
    stored = await by_origin(appliance)
    assert stored[first]["labels"] == ["crack", "spallation"]
    assert stored[first]["id"] == sample_id and len(stored) == 1

    # Undo twice: first the correction, then the sample itself.
    await page.keyboard.press("z")
    await message(page, "#msg", "undone")
    assert (await by_origin(appliance))[first]["labels"] == ["crack"]
    await page.click("#undo")
    await page.locator("#grid .tile.reviewed").wait_for(state="detached")
    assert await appliance.samples() == []

    # Draw a box the model missed on the full image, label it efflorescence, save.
    await page.click("#images .imgbtn >> nth=0")
    image_id = await page.locator("#images .imgbtn").nth(0).get_attribute("data-image")
    await page.wait_for_load_state("networkidle")
    await page.locator("#stage-img").scroll_into_view_if_needed()
    box = await page.locator("#stage-img").bounding_box()
    await page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6,
                          steps=5)
    await page.mouse.up()
    assert await page.text_content("#target-title") == "New box"
    await page.click('.lab[data-label="efflorescence"]')
    await page.click("#save")
    await message(page, "#msg", "saved: efflorescence")
    [drawn] = await appliance.samples()
    x0, y0, x1, y1 = drawn["origin"]["box"]
    assert drawn["origin"]["image_id"] == image_id and drawn["labels"] == ["efflorescence"]
    # The 192x128 image, dragged from 25%/25% to 50%/60% (a pixel of rounding either way).
    for got, want in zip((x0, y0, x1, y1), (48, 32, 96, 77), strict=True):
        assert abs(got - want) <= 1
    assert await page.locator("#stage-boxes .added").count() == 1
    assert console.errors == []


async def test_bad_input_shows_the_api_error_and_loses_nothing(appliance: Appliance,
                                                               browser: Any) -> None:
    page = await browser.new_page()
    await sign_in(page, appliance.base, appliance.token)
    for key in ("0", "1", "Enter"):
        await page.keyboard.press(key)
    await saved(page, 0)
    before = await appliance.samples()

    # An unknown label: the API's reason, the typed label kept for a second try.
    await page.fill("#other-label", "formwork joint")
    await page.click("#save")
    text = await message(page, "#msg", "unknown_labels")
    assert "unknown label(s) formwork joint" in text
    assert await page.input_value("#other-label") == "formwork joint"
    assert await appliance.samples() == before
    await page.check("#new-label")
    await page.click("#save")
    await message(page, "#msg", "new label formwork joint")
    assert len(await appliance.samples()) == len(before) + 1

    # A box outside the image, typed into the box fields.
    await page.click("#images .imgbtn >> nth=0")
    for field, value in (("#bx0", "10"), ("#by0", "10"), ("#bx1", "9999"), ("#by1", "60")):
        await page.fill(field, value)
        await page.press(field, "Tab")
    await page.click('.lab[data-label="crack"]')
    await page.click("#save")
    text = await message(page, "#msg", "is not inside")
    assert "bad_sample: box [10, 10, 9999, 60] is not inside the 192x128 image" in text
    assert len(await appliance.samples()) == len(before) + 1

    # The session expires while a label is pending: sign in again and it is saved then.
    await page.click("#grid .tile >> nth=3")
    workbench = appliance.daemon.workbench
    workbench.sessions.idle_s = 0.01
    await asyncio.sleep(0.05)
    for key in ("0", "2", "Enter"):
        await page.keyboard.press(key)
    text = await message(page, "#signin-msg", "session_expired")
    assert "sign in again" in text
    assert await page.is_visible("#signin")
    assert await page.get_attribute('.lab[data-label="spallation"]', "class") == "lab on"
    workbench.sessions.idle_s = 3600
    await page.fill("#token", appliance.token)
    await page.click("#signin button[type=submit]")
    await saved(page, 3)
    key = await page.locator("#grid .tile").nth(3).get_attribute("data-key")
    assert (await by_origin(appliance))[key]["labels"] == ["spallation"]


async def test_thirty_tiles_then_fine_tune_to_the_gate_table(appliance: Appliance,
                                                             browser: Any) -> None:
    """The issue's target: page open to a started fine-tune with 30 corrected tiles, no
    reload. The time is printed for the benchmark notes, never asserted."""
    page = await browser.new_page()
    console = Console(page)
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url))
    began = time.monotonic()
    await sign_in(page, appliance.base, appliance.token)
    for i in range(30):
        for key in ("0", str(i % len(LABELS) + 1), "Enter"):
            await page.keyboard.press(key)
        await saved(page, i)
    labeled = time.monotonic()
    await page.click('.tab[data-tab="train"]')
    assert await page.input_value("#t-method") == "auto"
    assert await page.input_value("#t-budget") == "30s"  # the site default, shown
    await page.fill("#t-budget", "20s")
    await page.fill("#t-epochs", "3")
    await page.click("#t-start")
    text = await message(page, "#t-msg", "job ft-")
    started = time.monotonic()
    assert "on 2" in text or "samples" in text
    print(f"\nworkbench: 30 tiles labeled in {labeled - began:.1f}s, fine-tune started "
          f"{started - began:.1f}s after the page opened")
    assert len(navigations) == 1  # the first load only: no reload

    # A second job while this one runs: the API's 409, shown; the first job is untouched.
    await page.click("#t-start")
    text = await message(page, "#t-msg", "job_running")
    assert "one job runs at a time" in text

    await page.wait_for_selector("#t-result table.gate", timeout=300_000)
    svc = appliance.daemon.finetune
    assert svc.jobs is not None
    [job] = await svc.db(svc.jobs.recent, 5)
    assert job["status"] == "done" and job["result"]["samples"] == 30
    comparison = job["result"]["comparison"]
    rows = page.locator("#t-result table.gate tr")
    assert await rows.count() == len(comparison["candidate"]["per_label_f1"]) + 2
    macro = await page.text_content("#t-result tr.macro")
    assert f"{comparison['candidate']['macro_f1']:.3f}" in str(macro)
    decision = await page.text_content("#t-result .decision")
    assert decision == ("Decision: promote" if comparison["promote"] else
                        "Decision: keep the current model")
    reasons = await page.locator("#t-result .reasons li").all_text_contents()
    assert reasons == comparison["reasons"]
    await small_png(page, shot("workbench-gate.png"))
    # Same-run baseline: the same 30 samples through the bare REST API, no browser.
    tiles = await by_origin(appliance)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(headers=appliance.auth) as s:
        for sample in tiles.values():
            body = {**sample["origin"], "labels": sample["labels"]}
            async with s.post(appliance.base + "/v1/samples", json=body) as r:
                assert r.status == 200  # the same tile again: relabeled, not duplicated
    api_s = time.monotonic() - t0
    print(f"workbench: 30 labels through the page {labeled - began:.2f}s (incl. sign-in), "
          f"through the bare API {api_s:.2f}s, ratio {(labeled - began) / api_s:.1f}")
    # Chromium logs every refused request; the one 409 above is the only one.
    assert [e for e in console.errors if "409 (Conflict)" not in e] == []


async def test_roll_back_to_an_older_model(appliance: Appliance, browser: Any) -> None:
    page = await browser.new_page()
    await sign_in(page, appliance.base, appliance.token)
    await page.click('.tab[data-tab="models"]')
    row = page.locator('#m-table tr[data-version="1.0.0"]')
    await row.locator("button.rollback").click()
    assert "Activate crack-vit 1.0.0 again" in str(await page.text_content("#confirm-text"))
    await page.click("#confirm-yes")
    await message(page, "#m-msg", "now serving crack-vit 1.0.0")
    store = appliance.daemon.models.store  # type: ignore[union-attr]
    assert store.meta(store.current())["version"] == "1.0.0"
    assert appliance.daemon.model_provider.current().version == "1.0.0"
    assert "active" in str(await row.locator("td").nth(2).text_content())


@pytest.mark.parametrize("name", list(VIEWPORTS))
async def test_no_console_errors_on_phone_tablet_laptop(appliance: Appliance, browser: Any,
                                                        name: str) -> None:
    width, height = VIEWPORTS[name]
    page = await browser.new_page(viewport={"width": width, "height": height},
                                  has_touch=name != "laptop")
    console = Console(page)
    await sign_in(page, appliance.base, appliance.token)
    tile = page.locator("#grid .tile").nth(1)
    await (tile.tap() if name != "laptop" else tile.click())
    await page.click('.lab[data-label="crack"]')
    await page.click("#save")
    await saved(page, 1)
    path = shot(f"workbench-{name}.png")
    await small_png(page, path)
    if name != "laptop":  # a box drawn with a finger (Chromium's own touch input events)
        await page.click("#images .imgbtn >> nth=0")
        await page.wait_for_load_state("networkidle")
        await page.locator("#stage-img").scroll_into_view_if_needed()
        await touch_drag(page, await page.locator("#stage-img").bounding_box())
        assert await page.text_content("#target-title") == "New box"
        assert int(await page.input_value("#bx1")) > int(await page.input_value("#bx0"))
    await page.click('.tab[data-tab="models"]')
    await page.wait_for_selector("#m-table tr[data-version]")
    assert console.errors == []
    assert path.stat().st_size < 250_000


async def small_png(page: Any, path: Path) -> None:
    """The top of the page as a palette PNG (small enough for the README)."""
    await page.evaluate("window.scrollTo(0, 0)")
    png = await page.screenshot()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(96).save(path, optimize=True)


async def touch_drag(page: Any, box: dict[str, float]) -> None:
    """A one-finger drag from 20% to 60% of ``box`` through the DevTools protocol."""
    cdp = await page.context.new_cdp_session(page)
    steps = [(0.2 + 0.4 * k / 5, 0.2 + 0.4 * k / 5) for k in range(6)]
    for i, (fx, fy) in enumerate(steps):
        kind = "touchStart" if i == 0 else "touchMove"
        await cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": box["x"] + box["width"] * fx, "y": box["y"] + box["height"] * fy}]})
    await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
