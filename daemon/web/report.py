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
import html
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
from urllib.parse import quote

from appliance import __version__
from appliance.errors import SpokeError
from daemon.web.results import (
    BACKGROUND,
    SEVERITY,
    SEVERITY_NAMES,
    Results,
    defects,
    severity,
    thumbnail,
)

if TYPE_CHECKING:
    from aiohttp import web

    from daemon.uplink.api import UplinkApi

ImageReader = Callable[[dict[str, Any]], bytes | None]

TOP_IMAGES = 6
MAX_THUMBNAILS = 200
EARTH_RADIUS_M = 6_371_008.8
SEV_COLORS = {3: "#c62828", 2: "#ef8f00", 1: "#1e63c4", 0: "#8893a2"}
STAGES = (("queue_s", "waiting in queue"), ("decode_s", "decode"), ("tile_s", "tiling"),
          ("infer_s", "inference"), ("aggregate_s", "aggregation"))


class ConverterMissing(SpokeError):
    """No HTML-to-PDF converter (headless Chromium) on this machine."""


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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


def map_svg(rows: Sequence[dict[str, Any]], findings: Sequence[Finding],
            width: int = 860, height: int = 460) -> str:
    """Defect positions on a local metric plane (equirectangular around the mean position,
    accurate to well under a metre over a bridge), with the flight track, a grid, a scale
    bar and north up. Each point links to its row in the findings table."""
    track = [(float(r["latitude"]), float(r["longitude"])) for r in rows
             if r.get("latitude") is not None]
    if not track:
        return ('<p class="muted">No GPS position in these images, so no map. Drones write '
                'it into the EXIF data; check the camera settings.</p>')
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
    parts = [f'<svg class="map" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Defect positions" xmlns="http://www.w3.org/2000/svg">',
             f'<rect width="{width}" height="{height}" fill="#f7f8fa"/>']
    half_w, half_h = width / 2 / scale, height / 2 / scale
    gx = math.floor((cx - half_w) / step) * step
    while gx <= cx + half_w:
        px = to_px(gx, 0)[0]
        parts.append(f'<line x1="{px:.1f}" y1="0" x2="{px:.1f}" y2="{height}" class="grid"/>')
        gx += step
    gy = math.floor((cy - half_h) / step) * step
    while gy <= cy + half_h:
        py = to_px(0, gy)[1]
        parts.append(f'<line x1="0" y1="{py:.1f}" x2="{width}" y2="{py:.1f}" class="grid"/>')
        gy += step
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in (to_px(*p) for p in pts))
    parts.append(f'<polyline points="{line}" class="track"/>')
    for p in pts:
        a, b = to_px(*p)
        parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" class="shot"/>')
    for f in sorted(findings, key=lambda f: (f.severity, f.prob)):  # worst drawn on top
        if f.gps is None:
            continue
        a, b = to_px(*xy(*f.gps))
        title = f"#{f.n}: {', '.join(pretty(lab) for lab in f.labels)}"
        parts.append(
            f'<a href="#f-{f.n}" id="p-{f.n}"><title>{e(title)}</title>'
            f'<circle cx="{a:.1f}" cy="{b:.1f}" r="9" fill="{SEV_COLORS[f.severity]}" '
            f'class="pt"/><text x="{a:.1f}" y="{b + 3.5:.1f}" class="ptn">{f.n}</text></a>')
    bar_px = step * scale
    parts.append(
        f'<g class="scale"><rect x="{pad - 6}" y="{height - 30}" width="{bar_px + 60:.1f}" '
        f'height="22" fill="#fff" opacity=".85"/><line x1="{pad}" y1="{height - 14}" '
        f'x2="{pad + bar_px:.1f}" y2="{height - 14}"/><text x="{pad + bar_px + 6:.1f}" '
        f'y="{height - 10}">{step:g} m</text></g>')
    parts.append(f'<g class="north" transform="translate({width - 26},30)">'
                 '<path d="M0,-16 L7,6 L0,1 L-7,6 Z"/><text y="20">N</text></g>')
    parts.append("</svg>")
    first, last = track[0], track[-1]
    parts.append(f'<p class="muted small">Centre {lat0:.6f}, {lon0:.6f} · {len(track)} '
                 f'positions from image EXIF · grid {step:g} m · first image at '
                 f'{first[0]:.6f}, {first[1]:.6f}, last at {last[0]:.6f}, {last[1]:.6f}</p>')
    return "".join(parts)


# --- timings --------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def timings_table(rows: Sequence[dict[str, Any]]) -> str:
    done = [r for r in rows if r["status"] == "done" and r.get("timings")]
    if not done:
        return '<p class="muted">No image was processed.</p>'
    lines = []
    totals = [r["finished_at"] - r["started_at"] for r in done
              if r.get("finished_at") and r.get("started_at")]
    for key, name in STAGES:
        values = [float(r["timings"][key]) for r in done if key in r["timings"]]
        if values:
            lines.append((name, values))
    if totals:
        lines.append(("total per image", totals))
    body = "".join(
        f"<tr><td>{e(name)}</td><td>{fmt_s(statistics.fmean(v))}</td>"
        f"<td>{fmt_s(_pct(v, 0.5))}</td><td>{fmt_s(_pct(v, 0.95))}</td>"
        f"<td>{fmt_s(max(v))}</td></tr>" for name, v in lines)
    received = [r["received_at"] for r in rows if r.get("received_at")]
    finished = [r["finished_at"] for r in done if r.get("finished_at")]
    wall = max(finished) - min(received) if received and finished else None
    rate = (f" · {len(done) / wall * 60:.1f} images/min" if wall and wall > 0 else "")
    return (f'<table class="num"><thead><tr><th>Stage</th><th>mean</th><th>p50</th><th>p95</th>'
            f'<th>max</th></tr></thead><tbody>{body}</tbody></table>'
            f'<p class="muted small">From the first image received to the last processed: '
            f'{fmt_s(wall)}{rate}. Per-stage times are measured on the appliance for each '
            f'image.</p>')


# --- the page -------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#eef0f3;color:#1f2933;font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#14202e;color:#fff;padding:20px 24px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c5cdd8}
main{max-width:1100px;margin:0 auto;padding:16px}
section{background:#fff;border:1px solid #dde1e6;border-radius:10px;padding:16px 18px;
margin-bottom:14px;break-inside:avoid-page}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:#637083;margin:0 0 10px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px}
.kpi{background:#f6f7f9;border-radius:8px;padding:10px 12px}
.kpi b{display:block;font-size:22px}
.kpi span{color:#637083;font-size:12px}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e5e8ec;vertical-align:top}
th{font-size:12px;color:#637083;font-weight:600}
table.num td:not(:first-child),table.num th:not(:first-child){text-align:right;
font-variant-numeric:tabular-nums}
.bar{height:10px;background:#e5e8ec;border-radius:5px;min-width:80px}
.bar i{display:block;height:100%;border-radius:5px}
.muted{color:#637083}.small{font-size:12px}
.sev{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:600;
color:#fff;white-space:nowrap}
.s3{background:#c62828}.s2{background:#ef8f00}.s1{background:#1e63c4}.s0{background:#8893a2}
.tag{display:inline-block;background:#f1f3f5;border-radius:4px;padding:0 5px;margin:0 3px 3px 0;
font-size:12px;white-space:nowrap}
svg.map{width:100%;height:auto;border:1px solid #dde1e6;border-radius:8px}
.grid{stroke:#e1e5ea;stroke-width:1}
.track{fill:none;stroke:#9aa5b1;stroke-width:1.5;stroke-dasharray:4 3}
.shot{fill:#9aa5b1}
.pt{stroke:#fff;stroke-width:2}
.ptn{fill:#fff;font-size:10px;font-weight:700;text-anchor:middle}
.scale line{stroke:#1f2933;stroke-width:3}.scale text,.north text{font-size:12px;fill:#1f2933}
.north path{fill:#1f2933}.north text{text-anchor:middle}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
figure{margin:0;border:1px solid #dde1e6;border-radius:8px;overflow:hidden;background:#fafbfc;
break-inside:avoid}
figure img{display:block;width:100%;height:auto}
figcaption{padding:8px 10px;font-size:13px}
td img{width:96px;height:auto;border-radius:4px;display:block}
a{color:#1d4ed8}
.legend span{margin-right:12px;white-space:nowrap}.legend span.muted{white-space:normal}
.scroll{overflow-x:auto}
@media (max-width:600px){.kpis{grid-template-columns:repeat(2,1fr)}.barcell{display:none}
header h1{font-size:19px}main{padding:8px}section{padding:12px}
th,td{padding:5px 4px}td img{width:72px}}
.legend i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px}
footer{color:#637083;font-size:12px;text-align:center;padding:4px 16px 24px}
@media print{body{background:#fff}main{padding:0}section{border:none;padding:8px 0}
header{-webkit-print-color-adjust:exact;print-color-adjust:exact}
.sev,.bar i,svg{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
@page{size:A4;margin:12mm}
"""


def _sev_badge(sev: int) -> str:
    return f'<span class="sev s{sev}">{SEVERITY_NAMES.get(sev, "none")}</span>'


def _labels_html(row: dict[str, Any], labels: Sequence[str]) -> str:
    probs = row.get("probs") or {}
    return "".join(f'<span class="tag">{e(pretty(lab))} {float(probs.get(lab, 0)):.0%}</span>'
                   for lab in labels)


def _geo_link(f: Finding) -> str:
    if f.gps is None:
        return '<span class="muted">no GPS</span>'
    lat, lon = f.gps
    return (f'<a href="geo:{lat:.7f},{lon:.7f}" title="open in a map app">{lat:.6f}, '
            f'{lon:.6f}</a>')


def build_report(mission: str, rows: Sequence[dict[str, Any]], read_image: ImageReader, *,
                 device_id: str | None = None, generated_at: float | None = None,
                 top: int = TOP_IMAGES) -> str:
    """The report of ``mission`` (its result rows, oldest first) as one HTML document."""
    generated_at = time.time() if generated_at is None else generated_at
    status = {s: 0 for s in ("queued", "running", "done", "failed")}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    done = [r for r in rows if r["status"] == "done"]
    findings = findings_of(rows)
    models = sorted({f"{r['model_name']} {r['model_version']}" for r in done
                     if r.get("model_name")})
    backends = sorted({r["backend"] for r in done if r.get("backend")})
    captured = sorted(r["captured_at"] for r in rows if r.get("captured_at"))
    drones = sorted({r["drone"] for r in rows if r.get("drone")})
    by_sev = {s: sum(1 for f in findings if f.severity == s) for s in (3, 2, 1)}

    # Counts per label, defects first by severity then by count.
    counts: dict[str, int] = {}
    peaks: dict[str, float] = {}
    for r in done:
        for lab in r.get("labels") or []:
            counts[lab] = counts.get(lab, 0) + 1
            peaks[lab] = max(peaks.get(lab, 0.0), float((r.get("probs") or {}).get(lab, 0.0)))
    order = sorted(counts, key=lambda lab: (lab == BACKGROUND, -SEVERITY.get(lab, 2),
                                            -counts[lab]))
    def badge(lab: str) -> str:
        return _sev_badge(SEVERITY.get(lab, 2)) if lab != BACKGROUND else ""

    count_rows = "".join(
        f"<tr><td>{e(pretty(lab))}</td><td>{badge(lab)}</td>"
        f"<td>{counts[lab]}</td><td>{counts[lab] / max(1, len(done)):.0%}</td>"
        f'<td class="barcell"><div class="bar"><i style="width:'
        f'{counts[lab] / max(1, len(done)) * 100:.0f}%;'
        f'background:{SEV_COLORS[SEVERITY.get(lab, 2) if lab != BACKGROUND else 0]}"></i></div>'
        f"</td><td>{peaks[lab]:.0%}</td></tr>" for lab in order)
    counts_html = (
        '<div class="scroll"><table class="num"><thead><tr><th>Label</th><th>severity</th>'
        '<th>images</th><th>share</th><th class="barcell"></th><th>max prob.</th></tr></thead>'
        f'<tbody>{count_rows}</tbody></table></div>' if counts
        else '<p class="muted">No image was processed yet.</p>')

    # The worst images, with overlays.
    worst = sorted(findings, key=lambda f: (f.severity, f.prob), reverse=True)[:top]
    figs = []
    for f in worst:
        data = read_image(f.row)
        img = (f'<img src="{data_uri(thumbnail(data, f.row, side=720, quality=80, heat=True))}" '
               f'alt="image {e(f.id[:12])} with its findings">' if data is not None else
               '<p class="muted" style="padding:40px 10px">The stored image was removed by '
               'retention; its results remain.</p>')
        figs.append(
            f'<figure id="img-{f.n}">{img}<figcaption>{_sev_badge(f.severity)} '
            f'<a href="#f-{f.n}">#{f.n}</a> · {_labels_html(f.row, f.labels)}<br>'
            f'<span class="muted small">{e(when(f.row.get("captured_at")))} · '
            f'{_geo_link(f)}</span></figcaption></figure>')
    worst_html = (f'<div class="figs">{"".join(figs)}</div>' if figs else
                  '<p class="muted">No defect found in this mission.</p>')
    shown = {f.n for f in worst}

    # Every finding.
    table_rows = []
    for f in findings:
        thumb = ""
        if f.n <= MAX_THUMBNAILS:
            data = read_image(f.row)
            if data is not None:
                thumb = (f'<img src="{data_uri(thumbnail(data, f.row, side=160, quality=70))}" '
                         f'alt="" loading="lazy">')
        links = [f'<a href="#p-{f.n}">map</a>'] if f.gps else []
        if f.n in shown:
            links.append(f'<a href="#img-{f.n}">overlay</a>')
        table_rows.append(
            f'<tr id="f-{f.n}"><td>{f.n}</td><td>{thumb}</td><td>{_sev_badge(f.severity)}</td>'
            f'<td>{_labels_html(f.row, f.labels)}</td><td>{e(when(f.row.get("captured_at")))}'
            f'<br><span class="muted small">{e(f.row.get("drone") or "")}</span></td>'
            f'<td>{_geo_link(f)}</td><td>{" · ".join(links)}<br>'
            f'<code class="small" title="{e(f.id)}">{e(f.id[:12])}</code></td></tr>')
    findings_html = (
        '<div class="scroll"><table><thead><tr><th>#</th><th>image</th><th>severity</th>'
        '<th>findings</th><th>captured</th><th>position</th><th>links · image id</th></tr>'
        '</thead><tbody>' + "".join(table_rows) + "</tbody></table></div>" if findings else
        '<p class="muted">No defect found in this mission.</p>')

    failed = [r for r in rows if r["status"] == "failed"]
    failed_html = ""
    if failed:
        items = "".join(f'<tr><td><code>{e(r["id"][:12])}</code></td><td>{e(r["reason"])}</td>'
                        f"</tr>" for r in failed)
        failed_html = (f'<section id="failed"><h2>Images that failed ({len(failed)})</h2>'
                       f"<table><tbody>{items}</tbody></table></section>")
    pending = status["queued"] + status["running"]
    pending_note = (f'<p class="muted">{pending} image(s) of this mission are still being '
                    'processed: this report is provisional.</p>' if pending else "")
    legend = "".join(f'<span><i style="background:{SEV_COLORS[s]}"></i>{SEVERITY_NAMES[s]}'
                     "</span>" for s in (3, 2, 1))
    span = (f"{when(captured[0])} – {when(captured[-1])}" if captured
            else "capture time unknown")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mission {e(mission)} · Spoke inspection report</title>
<style>{CSS}</style></head>
<body>
<header><h1>Inspection report · mission {e(mission)}</h1>
<p>{e(span)} · drone {e(", ".join(drones) or "unknown")} · appliance {e(device_id or "standalone")}
</p></header>
<main>
<section id="summary"><h2>Summary</h2>
<div class="kpis">
<div class="kpi"><b>{len(rows)}</b><span>images received</span></div>
<div class="kpi"><b>{status["done"]}</b><span>processed ({status["failed"]} failed)</span></div>
<div class="kpi"><b>{len(findings)}</b><span>images with defects</span></div>
<div class="kpi"><b>{by_sev[3]}</b><span>with a high-severity defect</span></div>
<div class="kpi"><b>{e(", ".join(models) or "–")}</b>
<span>model · {e(", ".join(backends) or "–")}</span></div>
</div>{pending_note}</section>
<section id="counts"><h2>Counts per label</h2>{counts_html}
<p class="muted small">An image counts once per label found in any of its tiles.
Severity: exposed bars and spalling high, corrosion stains and cracks medium, efflorescence
low.</p></section>
<section id="map"><h2>Defect positions</h2>
<p class="legend small">{legend}<span class="muted">numbers refer to the findings table;
dashed: flight track</span></p>{map_svg(rows, findings)}</section>
<section id="worst"><h2>Most severe findings</h2>{worst_html}</section>
<section id="findings"><h2>All findings ({len(findings)})</h2>{findings_html}</section>
<section id="timings"><h2>Processing times</h2>{timings_table(rows)}</section>
{failed_html}
</main>
<footer>Generated {e(fmt_time(generated_at))} by spoke {e(__version__)} ·
model {e(", ".join(models) or "–")} · self-contained file: no network needed to view or print
it · defect points as GeoJSON: /v1/missions/{e(quote(mission))}.geojson</footer>
</body></html>
"""


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
