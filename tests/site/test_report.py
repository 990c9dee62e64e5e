"""The inspector's mission report: a real mission of generated drone frames (EXIF GPS) posted
through the real daemon's API with a tiny model, then the report from the API and the CLI."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.web.report import build_report, findings_of, label_counts, map_svg, pretty
from tests.site.conftest import MISSION, Running
from tests.site.shots import shot

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium (Debian) missing")


def self_contained(page: str) -> None:
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#|geo:)', page), "only inline or local links"
    assert "<link" not in page and "@import" not in page


async def report(running: Running, mission: str = MISSION, **headers: str) -> tuple[int, str]:
    code, body, _ = await running.get(f"/v1/missions/{mission}/report",
                                      headers=headers or running.auth)
    return code, body.decode()


async def test_report_needs_the_uplink_token(running: Running, mission: list[str]) -> None:
    code, _ = await report(running, Authorization="Bearer spk_wrong")
    assert code == 401


async def test_report_of_an_unknown_mission_is_404(running: Running) -> None:
    code, _ = await report(running, "no-such-flight")
    assert code == 404


async def test_report_is_one_self_contained_file(running: Running, mission: list[str]) -> None:
    code, page = await report(running)
    assert code == 200
    self_contained(page)
    assert page.count('src="data:image/jpeg;base64,') >= 2  # overlays and table thumbnails


async def test_report_shows_counts_map_worst_images_findings_model_and_times(
        running: Running, mission: list[str]) -> None:
    _, page = await report(running)
    rows = await running.daemon.uplink.query("mission", MISSION)
    found = findings_of(rows)
    assert found, "the tiny model with low thresholds finds something"
    counts = page[page.index('<section id="counts">'):page.index('<section id="map">')]
    for c in label_counts([r for r in rows if r["status"] == "done"]):
        assert re.search(rf"<tr><td>{re.escape(pretty(c.label))}</td>.*?<td>{c.images}</td>",
                         counts), f"counts table row for {c.label}"
    assert page.count('class="pt"') == sum(1 for f in found if f.gps)  # one point per finding
    assert page.count("<figure") == min(6, len(found))
    assert all(f'id="f-{f.n}"' in page for f in found)  # a table row for each, with links
    assert 'href="#p-1"' in page and 'href="geo:' in page
    assert "tiny-vit 0.3.1" in page
    assert "inference" in page and "total per image" in page


async def test_cli_writes_the_same_report(running: Running, mission: list[str],
                                          tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = await asyncio.to_thread(main, ["report", MISSION, "--state-dir", str(running.state),
                                          "--out", str(out)])
    assert code == 0
    _, served = await report(running)

    def without_stamp(page: str) -> str:
        return re.sub(r"Generated [^<]*? by spoke", "Generated ... by spoke", page)

    assert without_stamp(out.read_text()) == without_stamp(served)


async def test_cli_compares_detections_with_the_frames_ground_truth(
        running: Running, mission: list[str], frames: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from models.groundtruth import compare_frames, truth_by_content

    out = tmp_path / "r.html"
    code = await asyncio.to_thread(main, ["report", MISSION, "--state-dir", str(running.state),
                                          "--out", str(out), "--ground-truth",
                                          str(frames[0].parent)])
    assert code == 0
    rows = await running.daemon.uplink.query("mission", MISSION)
    expected = compare_frames({r["id"]: r["labels"] for r in rows if r["status"] == "done"},
                              truth_by_content(frames[0].parent))
    assert expected.frames == len(frames)
    assert expected.line() in capsys.readouterr().out
    section = out.read_text().split('<section id="ground-truth">')[1].split("</section>")[0]
    assert expected.line() in section and f"{expected.fn} missed" in section


def test_cli_refuses_an_unknown_mission(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    assert main(["report", "nope", "--state-dir", str(tmp_path)]) == 2
    assert "no uplink results" in capsys.readouterr().err


def test_report_without_gps_or_stored_images_still_renders() -> None:
    row = {"id": "a" * 64, "status": "done", "labels": ["crack"], "probs": {"crack": 0.9},
           "tiles": [], "timings": {"infer_s": 0.1}, "mission": "m", "drone": None,
           "captured_at": None, "received_at": 1.0, "started_at": 1.0, "finished_at": 2.0,
           "latitude": None, "longitude": None, "model_name": "x", "model_version": "1",
           "backend": "onnxruntime", "stored": 0, "reason": None}
    page = build_report("m", [row], lambda r: None)
    assert "no map" in page and "removed by retention" in page
    assert "no map" in map_svg([row], findings_of([row]))


@needs_chromium
async def test_report_renders_in_chromium(running: Running, mission: list[str],
                                          tmp_path: Path) -> None:
    from tests.support.browser import render

    _, page = await report(running)
    html = tmp_path / "report.html"
    html.write_text(page)
    path = shot("report-desktop.png")
    result = await asyncio.to_thread(render, html.as_uri(), path, 1100, 2400)
    assert result.console_errors == []
    assert 'id="findings"' in result.dom and "<svg" in result.dom
    assert path.stat().st_size > 20_000


@needs_chromium
async def test_cli_prints_a_pdf(running: Running, mission: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = await asyncio.to_thread(main, ["report", MISSION, "--state-dir", str(running.state),
                                          "--out", str(out), "--pdf"])
    assert code == 0
    pdf = out.with_suffix(".pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    shutil.copy(pdf, shot("report.pdf"))


async def test_pdf_without_a_converter_says_so(running: Running, mission: list[str],
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SPOKE_CHROMIUM", "/nonexistent/chromium")
    out = tmp_path / "r.html"
    code = await asyncio.to_thread(main, ["report", MISSION, "--state-dir", str(running.state),
                                          "--out", str(out), "--pdf"])
    assert code == 2
    assert out.exists() and not out.with_suffix(".pdf").exists()
    assert "no PDF converter" in capsys.readouterr().err
