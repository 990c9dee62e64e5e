"""The inspector's mission report: one self-contained HTML file (and a PDF when Chromium is here).

Everything is inside the file: CSS inline, images as ``data:`` URIs, the map of defect
positions an SVG drawn here from the GPS in the images (no tiles, no network), no script. It
opens the same from a USB stick in a site office as from the appliance, and prints cleanly.

Served as ``GET /v1/missions/{id}/report`` (same bearer token as the uplink API; ``?download=1``
adds a file name) and written by ``spoke report MISSION --state-dir DIR --out FILE [--pdf]``.
The builder is a plain function of the mission's rows and an image reader, so both paths share
it and a test can call it directly.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import markupsafe

from appliance import __version__
from appliance.errors import SpokeError
from appliance.severity import BACKGROUND, SEVERITY, SEVERITY_NAMES
from daemon.uplink.store import ImageStatus
from daemon.web.results import Results, defects, severity, thumbnail

if TYPE_CHECKING:
    from aiohttp import web

    from daemon.uplink.api import UplinkApi
    from models.groundtruth import GroundTruth

ImageReader = Callable[[dict[str, Any]], bytes | None]

TOP_IMAGES = 6
MAX_THUMBNAILS = 200
EARTH_RADIUS_M = 6_371_008.8
SEV_COLORS = {3: "#c62828", 2: "#ef8f00", 1: "#1e63c4", 0: "#8893a2"}
STAGES = (("queue_s", "waiting in queue"), ("decode_s", "decode"), ("tile_s", "tiling"),
          ("infer_s", "inference"), ("aggregate_s", "aggregation"))


class ConverterMissing(SpokeError):
    """No HTML-to-PDF converter (headless Chromium) on this machine."""


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def fmt_time(ts: float | None) -> str:
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def when(iso: str | None) -> str:
    """An ISO capture time as ``2026-05-01 10:00:07 UTC`` (or as it came when it has no zone)."""
    if not iso:
        return "–"
    from datetime import UTC, datetime

    try:
        stamp = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if stamp.tzinfo is None:
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(label: str) -> str:
    return label.replace("_", " ")


@dataclass(frozen=True)
class Finding:
    n: int
    row: dict[str, Any]
    labels: list[str]
    severity: int
    prob: float

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def gps(self) -> tuple[float, float] | None:
        if self.row.get("latitude") is None:
            return None
        return float(self.row["latitude"]), float(self.row["longitude"])


def findings_of(rows: Sequence[dict[str, Any]]) -> list[Finding]:
    """Every image with a defect, in capture order, numbered from 1."""
    out: list[Finding] = []
    for row in rows:
        found = defects(row)
        if found:
            sev, prob = severity(row)
            probs = row.get("probs") or {}
            found.sort(key=lambda lab: (-SEVERITY.get(lab, 2), -float(probs.get(lab, 0.0))))
            out.append(Finding(len(out) + 1, row, found, sev, prob))
    return out


# --- the map --------------------------------------------------------------------------------


def _nice_step(span_m: float) -> float:
    """A round grid step giving about four to eight lines over ``span_m`` metres."""
    raw = span_m / 5
    base = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for mult in (1, 2, 5, 10):
        if base * mult >= raw:
            return float(base * mult)
    return float(base * 10)


@dataclass(frozen=True)
class MapPoint:
    n: int
    x: float
    y: float
    severity: int
    labels: list[str]


@dataclass(frozen=True)
class MapView:
    """The map in pixels: what ``report_map.html`` draws."""

    width: int
    height: int
    pad: int
    grid_x: list[float]
    grid_y: list[float]
    track: list[tuple[float, float]]
    points: list[MapPoint]
    step: float
    bar_px: float
    centre: tuple[float, float]
    first: tuple[float, float]
    last: tuple[float, float]
    positions: int


def map_view(rows: Sequence[dict[str, Any]], findings: Sequence[Finding],
             width: int = 860, height: int = 460) -> MapView | None:
    """Defect positions on a local metric plane (equirectangular around the mean position,
    accurate to well under a metre over a bridge), with the flight track, a grid, a scale
    bar and north up; None without any GPS position."""
    track = [(float(r["latitude"]), float(r["longitude"])) for r in rows
             if r.get("latitude") is not None]
    if not track:
        return None
    lat0 = sum(p[0] for p in track) / len(track)
    lon0 = sum(p[1] for p in track) / len(track)
    k = math.pi / 180 * EARTH_RADIUS_M

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return (lon - lon0) * k * math.cos(math.radians(lat0)), (lat - lat0) * k

    pts = [xy(*p) for p in track]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    span_x = max(max(xs) - min(xs), 20.0) * 1.15
    span_y = max(max(ys) - min(ys), 20.0) * 1.15
    span = max(span_x, span_y)
    pad = 34
    scale = min((width - 2 * pad) / span_x, (height - 2 * pad) / span_y)
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2

    def to_px(x: float, y: float) -> tuple[float, float]:
        return width / 2 + (x - cx) * scale, height / 2 - (y - cy) * scale

    step = _nice_step(min(span, max(width, height) / scale))
    half_w, half_h = width / 2 / scale, height / 2 / scale
    grid_x, grid_y = [], []
    gx = math.floor((cx - half_w) / step) * step
    while gx <= cx + half_w:
        grid_x.append(to_px(gx, 0)[0])
        gx += step
    gy = math.floor((cy - half_h) / step) * step
    while gy <= cy + half_h:
        grid_y.append(to_px(0, gy)[1])
        gy += step
    points = [MapPoint(f.n, *to_px(*xy(*f.gps)), f.severity, f.labels)
              for f in sorted(findings, key=lambda f: (f.severity, f.prob))  # worst on top
              if f.gps is not None]
    return MapView(width, height, pad, grid_x, grid_y, [to_px(*p) for p in pts], points,
                   step, step * scale, (lat0, lon0), track[0], track[-1], len(track))


def map_svg(rows: Sequence[dict[str, Any]], findings: Sequence[Finding]) -> str:
    """The map section alone (the report includes the same template)."""
    return _TEMPLATES.get_template("report_map.html").render(
        map=map_view(rows, findings), sev_colors=SEV_COLORS)


# --- timings --------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Timings:
    lines: list[tuple[str, float, float, float, float]]  # stage, mean, p50, p95, max
    wall: float | None
    per_minute: float | None


def timings_of(rows: Sequence[dict[str, Any]]) -> Timings | None:
    """Per-stage times over the processed images, and the mission's throughput."""
    done = [r for r in rows if r["status"] == ImageStatus.DONE and r.get("timings")]
    if not done:
        return None
    series: list[tuple[str, list[float]]] = []
    for key, name in STAGES:
        values = [float(r["timings"][key]) for r in done if key in r["timings"]]
        if values:
            series.append((name, values))
    totals = [r["finished_at"] - r["started_at"] for r in done
              if r.get("finished_at") and r.get("started_at")]
    if totals:
        series.append(("total per image", totals))
    received = [r["received_at"] for r in rows if r.get("received_at")]
    finished = [r["finished_at"] for r in done if r.get("finished_at")]
    wall = max(finished) - min(received) if received and finished else None
    return Timings(
        [(name, statistics.fmean(v), _pct(v, 0.5), _pct(v, 0.95), max(v)) for name, v in series],
        wall, len(done) / wall * 60 if wall and wall > 0 else None)


# --- the page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelCount:
    label: str
    severity: int | None  # None for background
    images: int
    share: float
    peak: float

    @property
    def color(self) -> str:
        return SEV_COLORS[self.severity or 0]


def label_counts(done: Sequence[dict[str, Any]]) -> list[LabelCount]:
    """Images per label, defects first by severity then by count."""
    counts: dict[str, int] = {}
    peaks: dict[str, float] = {}
    for r in done:
        for lab in r.get("labels") or []:
            counts[lab] = counts.get(lab, 0) + 1
            peaks[lab] = max(peaks.get(lab, 0.0), float((r.get("probs") or {}).get(lab, 0.0)))
    order = sorted(counts, key=lambda lab: (lab == BACKGROUND, -SEVERITY.get(lab, 2),
                                            -counts[lab]))
    return [LabelCount(lab, None if lab == BACKGROUND else SEVERITY.get(lab, 2), counts[lab],
                       counts[lab] / max(1, len(done)), peaks[lab]) for lab in order]


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    env.filters.update(pretty=pretty, pct=lambda v: f"{float(v):.0%}", fmt_s=fmt_s,
                       fmt_time=fmt_time, when=when)
    return env


_TEMPLATES = _templates()
CSS = (Path(__file__).parent / "static" / "report.css").read_text()


def build_report(mission: str, rows: Sequence[dict[str, Any]], read_image: ImageReader, *,
                 device_id: str | None = None, generated_at: float | None = None,
                 top: int = TOP_IMAGES, ground_truth: GroundTruth | None = None) -> str:
    """The report of ``mission`` (its result rows, oldest first) as one HTML document; with
    ``ground_truth`` (a test flight over known defects) also how the detections compare."""
    status = {s.value: 0 for s in ImageStatus}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    done = [r for r in rows if r["status"] == ImageStatus.DONE]
    findings = findings_of(rows)
    captured = sorted(r["captured_at"] for r in rows if r.get("captured_at"))

    def image(f: Finding, side: int, quality: int, heat: bool = False) -> str | None:
        data = read_image(f.row)
        return None if data is None else data_uri(
            thumbnail(data, f.row, side=side, quality=quality, heat=heat))

    worst = sorted(findings, key=lambda f: (f.severity, f.prob), reverse=True)[:top]
    return _TEMPLATES.get_template("report.html").render(
        css=markupsafe.Markup(CSS),  # our own file, not data
        mission=mission,
        span=f"{when(captured[0])} – {when(captured[-1])}" if captured
        else "capture time unknown",
        drones=sorted({r["drone"] for r in rows if r.get("drone")}),
        device_id=device_id,
        received=len(rows),
        status=status,
        pending=status[ImageStatus.QUEUED] + status[ImageStatus.RUNNING],
        findings=findings,
        by_severity={s: sum(1 for f in findings if f.severity == s) for s in (3, 2, 1)},
        models=sorted({f"{r['model_name']} {r['model_version']}" for r in done
                       if r.get("model_name")}),
        backends=sorted({r["backend"] for r in done if r.get("backend")}),
        counts=label_counts(done),
        map=map_view(rows, findings),
        worst=[(f, image(f, 720, 80, heat=True)) for f in worst],
        shown={f.n for f in worst},
        table=[(f, image(f, 160, 70) if f.n <= MAX_THUMBNAILS else None) for f in findings],
        timings=timings_of(rows),
        failed=[r for r in rows if r["status"] == ImageStatus.FAILED],
        generated_at=time.time() if generated_at is None else generated_at,
        version=__version__,
        severity_names=SEVERITY_NAMES,
        sev_colors=SEV_COLORS,
        ground_truth=ground_truth,
    )


# --- the HTTP route and the files -----------------------------------------------------------

REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"


def install_route(app: web.Application, api: UplinkApi,
                  device_id: Callable[[], str | None] = lambda: None) -> None:
    """``GET /v1/missions/{id}/report``, behind the uplink API's own bearer-token check."""
    import asyncio

    from aiohttp import web

    from daemon.uplink.api import error

    results = Results(api.service.root)
    one_at_a_time = asyncio.Semaphore(1)  # a report decodes images: keep CPU for inference

    async def report(request: web.Request) -> web.StreamResponse:
        mission = request.match_info["mission"]
        rows = await api.service.query("mission", mission)
        if not rows:
            return error(404, "not_found", f"no images for mission {mission!r}")
        async with one_at_a_time:
            page = await asyncio.to_thread(build_report, mission, rows, results.read_image,
                                           device_id=device_id())
        headers = {"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "no-store"}
        if request.query.get("download"):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in mission)
            headers["Content-Disposition"] = f'attachment; filename="report-{safe}.html"'
        return web.Response(text=page, content_type="text/html", headers=headers)

    # The same wrapper as every other /v1 route: 401 before anything is read.
    app.router.add_get("/v1/missions/{mission}/report", api._auth(report))


def find_chromium() -> str | None:
    """A headless Chromium to print with: ``SPOKE_CHROMIUM`` or the usual names on PATH."""
    explicit = os.environ.get("SPOKE_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(html_file: Path, pdf_file: Path, timeout: float = 120.0) -> None:
    """Print ``html_file`` to ``pdf_file`` with headless Chromium (no network: the file is
    self-contained). Raises ``ConverterMissing`` when there is no Chromium."""
    chromium = find_chromium()
    if chromium is None:
        raise ConverterMissing(
            "no PDF converter: --pdf needs headless Chromium (Debian: apt install chromium; or "
            "set SPOKE_CHROMIUM); the HTML report prints to PDF from any browser too")
    pdf_file.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--no-pdf-header-footer",
             "--print-to-pdf-no-header", f"--print-to-pdf={pdf_file}",
             html_file.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout, check=False)
    if not pdf_file.exists() or pdf_file.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise SpokeError(f"{chromium} did not write {pdf_file} (exit {proc.returncode}): "
                         + " | ".join(tail))
