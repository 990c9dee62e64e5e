"""The technician's status page: ``GET /`` (HTML), ``/status.json``, thumbnails, static assets.

Read-only and without login, for the site network: it shows what the appliance is doing and
why it is stuck, never anything that lets a reader change it or use the uplink, except during
a pairing window someone opened on purpose (``daemon/web/pairing.py``). Every asset is served
by the daemon itself (no CDN), the page refreshes ``/status.json`` every few seconds, and a
strict Content-Security-Policy keeps it to its own script and style.

``StatusPage`` reads the daemon's parts through ``Sources`` (built by
``daemon.compose.status_view``): callables that return values (a snapshot, a ``QueueView``),
never a service, so the page cannot change what it shows. Each is optional, so the page also
works for ``spoke run --standalone`` and in tests that build only some of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.health import HealthSnapshot, Severity
from daemon.web import pairing
from daemon.web.results import Results, severity, thumbnail
from daemon.web.signed import UrlSigner

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
REFRESH_S = 5
RECENT = 12
THUMB_CACHE = 64
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
STUCK = {
    "waiting-for-bundle", "bundle-refused", "hub-unreachable", "enrollment-refused",
    "certificate-expired",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# What each health alert means to a technician standing next to the box.
ALERT_TITLES = {
    "disk_full": "Disk almost full",
    "memory_pressure": "Memory pressure",
    "gpu_temperature": "GPU too hot",
    "gpu_throttling": "GPU throttling",
    "gpu_ecc_errors": "GPU memory errors (ECC)",
    "nvml_lost": "GPU driver lost",
    "no_active_model": "No active model",
    "hub_unreachable": "Hub unreachable for a long time",
}


@dataclass(frozen=True)
class QueueView:
    """The uplink's queue as the page shows it."""

    depth: int
    limit: int
    ready: bool


@dataclass
class Sources:
    """Where the page reads from; any of them may be missing."""

    status: Callable[[], dict[str, Any]] = dict
    uplink_root: Path | None = None
    #: The health service's latest snapshot (None before the first).
    health: Callable[[], HealthSnapshot | None] = lambda: None
    #: The alerts raised now, as (alert, subject) pairs.
    alerts: Callable[[], list[tuple[str, str]]] = list
    #: The uplink's queue; None without an uplink.
    queue: Callable[[], QueueView | None] = lambda: None
    model: Callable[[], dict[str, Any] | None] = lambda: None
    #: The certificate the API serves now (it changes at enrollment and renewal); None: HTTP.
    tls_cert: Callable[[], str | None] = lambda: None
    #: The API's token check (name or None): thumbnails need a token or a signed link.
    verify_token: Callable[[str], str | None] = lambda token: None
    extra: dict[str, Any] = field(default_factory=dict)


def _health_view(snap: HealthSnapshot | None) -> dict[str, Any] | None:
    if snap is None:
        return None
    host = snap.host
    cores = host.cpu.usage_ratio_per_core
    root = next((f for f in host.filesystems if f.mountpoint == "/"), None)
    disks = sorted(host.filesystems, key=lambda f: f.used_ratio, reverse=True)
    temps = [t.celsius for t in host.temperatures]
    return {
        "taken_at": snap.taken_at_s,
        "cpu_ratio": sum(cores) / len(cores) if cores else None,
        "cores": len(cores),
        "load_1m": host.cpu.load_1m,
        "memory_used_ratio": 1 - host.memory.available_ratio,
        "memory_total_bytes": host.memory.total_bytes,
        "disk": [{"mountpoint": f.mountpoint, "used_ratio": f.used_ratio,
                  "free_bytes": f.free_bytes} for f in ([root] if root else disks[:1])],
        "max_temperature_celsius": max(temps) if temps else None,
        "uptime_s": host.uptime_s,
        "gpu": {
            "status": snap.gpu.status, "message": snap.gpu.message,
            "driver_version": snap.gpu.driver_version,
            "gpus": [{"index": g.index, "name": g.name,
                      "utilization_ratio": g.utilization_ratio,
                      "memory_used_bytes": g.memory_used_bytes,
                      "memory_total_bytes": g.memory_total_bytes,
                      "temperature_celsius": g.temperature_celsius,
                      "power_draw_watts": g.power_draw_watts,
                      "throttle_reasons": g.throttle_reasons} for g in snap.gpu.gpus],
        },
        "faults": list(snap.faults),
    }


def _alerts(active: list[tuple[str, str]]) -> list[dict[str, Any]]:
    from daemon.health.alerts import RULES

    severities = {rule.alert: rule.severity for rule in RULES}
    return [{"alert": alert, "subject": subject,
             "title": ALERT_TITLES.get(alert, alert.replace("_", " ")),
             "severity": severities.get(alert, Severity.WARNING)}
            for alert, subject in active]


def thumb_path(image_id: str) -> str:
    return f"/status/thumbs/{image_id}.jpg"


def _finding(row: dict[str, Any], link: Callable[[str], str] | None) -> dict[str, Any]:
    """``link``: makes a thumbnail's signed URL; None for a viewer without a credential."""
    probs = row.get("probs") or {}
    labels = [lab for lab in (row.get("labels") or []) if lab != "background"]
    sev, _ = severity(row)
    return {
        "id": row["id"], "mission": row["mission"], "drone": row["drone"],
        "labels": [{"label": lab, "prob": round(float(probs.get(lab, 0.0)), 3)}
                   for lab in sorted(labels, key=lambda lab: -float(probs.get(lab, 0.0)))],
        "severity": sev, "captured_at": row["captured_at"], "finished_at": row["finished_at"],
        "gps": None if row.get("latitude") is None else
        {"latitude": row["latitude"], "longitude": row["longitude"]},
        "thumbnail": link(thumb_path(row["id"])) if link and row.get("stored") else None,
    }


class StatusPage:
    def __init__(self, sources: Sources, refresh_s: float = REFRESH_S) -> None:
        self.sources = sources
        self.refresh_s = refresh_s
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._recent_ids: set[str] = set()
        self._paired: str | None = None
        self._signer = UrlSigner()

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/status.json", self.status_json)
        r.add_get("/status/thumbs/{id}.jpg", self.thumb)
        r.add_static("/status/static/", STATIC)

    @property
    def results(self) -> Results | None:
        root = self.sources.uplink_root
        return None if root is None else Results(root)

    # -- routes --------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC / "status.html")
        response.headers.update(PAGE_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response

    def _viewer(self, request: web.Request) -> str | None:
        """The token name behind ``Authorization: Bearer`` (a session presents one), or None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.sources.verify_token(token.strip()) if scheme.lower() == "bearer" else None

    async def status_json(self, request: web.Request) -> web.Response:
        link = self._signer.sign if self._viewer(request) is not None else None
        data = await self.snapshot(self._base_url(request), link)
        return web.json_response(data, headers={**PAGE_HEADERS, "Cache-Control": "no-store"})

    async def thumb(self, request: web.Request) -> web.Response:
        """Only images the page currently lists, and only with a token or a signed link."""
        image_id = request.match_info["id"]
        q = request.query
        if not (self._signer.valid(request.path, q.get("exp"), q.get("sig"))
                or self._viewer(request) is not None):
            raise web.HTTPUnauthorized(
                text="a thumbnail needs an API token or a signed link from an authenticated page")
        results = self.results
        if not IMAGE_ID.match(image_id) or results is None or image_id not in self._recent_ids:
            raise web.HTTPNotFound(text="not a recent detection")
        jpeg = self._thumbs.get(image_id)
        if jpeg is None:
            jpeg = await asyncio.to_thread(self._make_thumb, results, image_id)
            if jpeg is None:
                raise web.HTTPNotFound(text="the stored image is gone (retention)")
            self._thumbs[image_id] = jpeg
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return web.Response(body=jpeg, content_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=3600",
                                     "X-Content-Type-Options": "nosniff"})

    @staticmethod
    def _make_thumb(results: Results, image_id: str) -> bytes | None:
        row = results.get(image_id)
        data = None if row is None else results.read_image(row)
        if row is None or data is None:
            return None
        return thumbnail(data, row)

    def _base_url(self, request: web.Request) -> str:
        """The uplink URL as this client reached us (the phone is on the same network)."""
        scheme = "https" if self.sources.tls_cert() else "http"
        host = request.host if re.fullmatch(r"[A-Za-z0-9.\-:\[\]]{1,260}", request.host) \
            else "appliance"
        return f"{scheme}://{host}"

    # -- the snapshot --------------------------------------------------------------------

    async def snapshot(
        self, base_url: str, link: Callable[[str], str] | None = None
    ) -> dict[str, Any]:
        src = self.sources
        status = src.status() or {}
        prov = dict(status.get("provisioning") or {"state": "unknown"})
        prov["stuck"] = prov.get("state") in STUCK
        results = self.results
        activity = await asyncio.to_thread(results.activity, RECENT) if results else None
        uplink: dict[str, Any] | None = None
        recent: list[dict[str, Any]] = []
        if activity is not None:
            recent = [_finding(r, link) for r in activity.pop("recent")]
            self._recent_ids = {f["id"] for f in recent}
            uplink = activity
        queue = src.queue()
        if queue is not None:
            uplink = {**(uplink or {}), "queue_depth": queue.depth, "queue_limit": queue.limit,
                      "ready": queue.ready}
        return {
            "generated_at": time.time(),
            "refresh_s": self.refresh_s,
            "software_version": __version__,
            "device_id": status.get("device_id"),
            "provisioning": prov,
            "hub": status.get("hub"),
            "api": {"url": base_url, "tls": bool(src.tls_cert())},
            "model": src.model(),
            "health": _health_view(src.health()),
            "alerts": _alerts(src.alerts()),
            "uplink": uplink,
            "recent": recent,
            "pairing": await asyncio.to_thread(self._pairing, base_url),
            **src.extra,
        }

    def _pairing(self, base_url: str) -> dict[str, Any]:
        root = self.sources.uplink_root
        offer = pairing.read_offer(root) if root is not None else None
        view: dict[str, Any] = {"url": base_url, "offer": None, "paired": None}
        if offer is not None and root is not None:
            results = self.results
            if results is not None and results.used_by(offer.name):
                self._paired = offer.name
                pairing.remove_offer(root)  # done: the token stops being shown at once
                offer = None
            elif offer.expired():
                with contextlib.suppress(OSError):
                    pairing.remove_offer(root)
                offer = None
        view["paired"] = self._paired
        if offer is not None:
            view["offer"] = {"name": offer.name, "token": offer.token,
                             "expires_at": offer.expires_at}
        fingerprint = pairing.cert_fingerprint(self.sources.tls_cert())
        uri = pairing.pairing_uri(base_url, offer, fingerprint)
        view["qr"] = pairing.qr_svg_data_uri(uri)
        view["qr_text"] = uri
        view["workbench"] = None
        if offer is not None:
            link = pairing.workbench_link(base_url, offer)
            view["workbench"] = {"url": link, "qr": pairing.qr_svg_data_uri(link)}
        view["fingerprint"] = fingerprint
        return view
