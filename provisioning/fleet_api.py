"""The dashboard's pages and the JSON API they read (``/api/v1/...``), served by the hub.

The pages are static HTML and scripts with a strict CSP (no inline code, nothing from another
origin); everything they show comes from this API, which ``--json`` users and the tests use
too. Lists are paged: no response carries the whole fleet's health history.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.config import HubConfig
from appliance.delivery import DesiredState
from appliance.errors import SpokeError
from provisioning.auth import operator_of
from provisioning.findings import summarize_findings
from provisioning.fleet import (
    device_page,
    health_point,
    summarize,
    with_acks,
)
from provisioning.home import HubHome
from provisioning.placement import DeviceView, load_policy
from provisioning.registry import HEALTH_HISTORY, Registry
from provisioning.rollout import catalog, fleet_desired
from provisioning.rollouts import ROLLED_BACK, rollouts

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGES = {
    "/": "index.html",
    "/devices/{device}": "device.html",
    "/rollouts": "rollouts.html",
    "/findings": "findings.html",
    "/alerts": "alerts.html",
}
HISTORY_KINDS = (
    "model_activated", "model_committed", "model_rolled_back", "model_refused",
    "model_interrupted",
)
MAX_EVENTS = 200
MAX_FINDING_EVENTS = 50_000


class BadRequest(web.HTTPBadRequest):
    """A 400 whose JSON body says what to send instead."""

    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


class NotFound(web.HTTPNotFound):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, not {raw!r}")
    return int(raw)


def _float(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a Unix time in seconds, not {raw!r}") from None


def current_desired(
    home: HubHome, config: HubConfig, registry: Registry
) -> dict[str, DesiredState]:
    """Each device's desired state as the hub publishes it; empty while the policy is unusable
    (the rollout loop logs why)."""
    try:
        return fleet_desired(home, config, registry)
    except SpokeError:
        return {}


def _page(name: str) -> Any:
    async def handler(request: web.Request) -> web.FileResponse:
        response = web.FileResponse(STATIC / name)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    return handler


class FleetApi:
    """Handlers over one registry. Every route here needs an operator: the hub's default-deny
    middleware (provisioning/auth) refuses anyone else before a handler runs."""

    def __init__(self, home: HubHome, config: HubConfig, registry: Registry) -> None:
        self.home = home
        self.config = config
        self.registry = registry

    def install(self, app: web.Application) -> None:
        r = app.router
        for path, name in PAGES.items():
            r.add_get(path, _page(name))
        r.add_get("/api/v1/devices", self.devices)
        r.add_get("/api/v1/devices/{device}", self.device)
        r.add_get("/api/v1/devices/{device}/health", self.health)
        r.add_get("/api/v1/rollouts", self.rollouts)
        r.add_get("/api/v1/findings", self.findings)
        r.add_get("/api/v1/alerts", self.alerts)
        r.add_post("/api/v1/alerts/{event}/ack", self.acknowledge)

    def _desired(self) -> dict[str, DesiredState]:
        return current_desired(self.home, self.config, self.registry)

    def _known(self, request: web.Request) -> str:
        device_id = request.match_info["device"]
        if self.registry.device(device_id) is None:
            raise NotFound(f"no device {device_id!r}; see GET /api/v1/devices")
        return device_id

    async def devices(self, request: web.Request) -> web.Response:
        """``?selector=site in (a,b)&limit=100&cursor=...``: one page of the filtered fleet."""
        try:
            page = device_page(
                self.registry,
                request.query.get("selector", ""),
                _int(request, "limit", 100, 1, 500),
                request.query.get("cursor"),
                self._desired(),
            )
        except SpokeError as exc:
            raise BadRequest(str(exc)) from exc
        return web.json_response(page.as_dict())

    async def device(self, request: web.Request) -> web.Response:
        device_id = self._known(request)
        device = self.registry.device(device_id)
        assert device is not None
        alert_events = self.registry.events(device_id, kind="alert", limit=500)
        desired = self._desired().get(device_id)
        summary = summarize(device, self.registry.latest_health(device_id), alert_events,
                            desired=desired.model.version if desired and desired.model else None)
        history = sorted(
            (e for k in HISTORY_KINDS for e in self.registry.events(device_id, kind=k, limit=50)),
            key=lambda e: -e["ts"],
        )
        body = summary.as_dict() | {
            "alerts": with_acks(self.registry, summary.alerts),
            "desired": desired.model_dump(mode="json", exclude_none=True) if desired else None,
            "os": (device.state or {}).get("os"),
            "model_history": history[:50],
            "recent_alerts": alert_events[:20],
            "recent_events": self.registry.events(device_id, limit=20),
        }
        return web.json_response(body)

    async def health(self, request: web.Request) -> web.Response:
        """``?limit=120&before=TS``: chart points, newest last; ``next_before`` pages back."""
        device_id = self._known(request)
        limit = _int(request, "limit", HEALTH_HISTORY, 1, HEALTH_HISTORY)
        before = _float(request, "before")
        snapshots = [
            s for s in self.registry.health_history(device_id)
            if before is None or s["taken_at_s"] < before
        ]
        page = snapshots[:limit]
        more = len(snapshots) > limit
        points = [asdict(health_point(s)) for s in reversed(page)]
        return web.json_response({
            "points": points,
            "next_before": page[-1]["taken_at_s"] if more else None,
        })

    async def rollouts(self, request: web.Request) -> web.Response:
        try:
            policy = load_policy(self.home.policy)
            published = catalog(self.home, self.config)
        except SpokeError as exc:
            raise BadRequest(str(exc)) from exc
        devices = [
            DeviceView(d.id, d.labels, dict((d.state or {}).get("model") or {}))
            for d in self.registry.devices()
            if d.revoked_at is None
        ]
        events = self.registry.events(kind=ROLLED_BACK, limit=10_000)
        return web.json_response(
            {"rules": [asdict(r) for r in rollouts(policy, published, devices, events)]}
        )

    async def findings(self, request: web.Request) -> web.Response:
        """``?days=30``: detection summaries of the last N days (numbers only, no images)."""
        days = _int(request, "days", 30, 1, 366)
        since = time.time() - days * 86400
        events = [
            e for e in self.registry.events(kind="detection", limit=MAX_FINDING_EVENTS)
            if e["ts"] >= since
        ]
        devices = {d.id: d for d in self.registry.devices()}
        return web.json_response(
            summarize_findings(events, devices)
            | {"days": days, "truncated": len(events) == MAX_FINDING_EVENTS}
        )

    async def alerts(self, request: web.Request) -> web.Response:
        """Active alerts fleet-wide (acknowledged or not) and a page of recent alert events."""
        limit = _int(request, "limit", 50, 1, MAX_EVENTS)
        now = time.time()
        active = [
            a
            for d in self.registry.devices()
            if d.revoked_at is None
            for a in summarize(d, None, self.registry.events(d.id, kind="alert", limit=500),
                               now).alerts
        ]
        active.sort(key=lambda a: -a["ts"])
        recent = self.registry.events(kind="alert", limit=limit + 1,
                                      before=_float(request, "before"))
        return web.json_response({
            "active": with_acks(self.registry, active),
            "recent": recent[:limit],
            "next_before": recent[limit - 1]["ts"] if len(recent) > limit else None,
        })

    async def acknowledge(self, request: web.Request) -> web.Response:
        """Record that the signed-in operator has seen this raised alert (the first ack stands)."""
        event_id = request.match_info["event"]
        ack = self.registry.acknowledge(event_id, operator_of(request))
        if ack is None:
            raise NotFound(f"no alert event {event_id!r}; see GET /api/v1/alerts")
        return web.json_response({"event_id": event_id, "acknowledged": ack})
