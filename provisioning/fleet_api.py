"""The dashboard's pages and the JSON API they read (``/api/v1/...``), served by the hub.

The pages are static HTML and scripts with a strict CSP (no inline code, nothing from another
origin); everything they show comes from this API, which ``--json`` users and the tests use
too. Lists are paged: no response carries the whole fleet's health history.
"""

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, cast

from aiohttp import web

from appliance.config import HubConfig
from appliance.delivery import DesiredState
from appliance.errors import SpokeError
from provisioning import repository
from provisioning.auth import operator_of
from provisioning.findings import summarize_findings
from provisioning.fleet import (
    ALERT_EVENTS,
    alert_events,
    device_page,
    health_point,
    summarize,
    with_acks,
)
from provisioning.home import HubHome
from provisioning.placement import (
    DeviceView,
    Policy,
    Published,
    desired_states,
    load_policy,
)
from provisioning.registry import HEALTH_HISTORY, Device, Registry
from provisioning.rollout import catalog, device_view
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
    "model_interrupted", "software_updated",
)
MAX_EVENTS = 200
MAX_FINDING_EVENTS = 50_000
T = TypeVar("T")


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


class PlacementInputs:
    """The policy, the published versions and every device's desired state, recomputed only
    when what they come from changed: the policy file (its stat), the repository's timestamp
    metadata (rewritten by every publish) and the devices' labels and reported models. The
    keys are read on every call, since the CLI and other hub processes write these too; only
    the parsing and the placement are saved. Thread-safe: handlers run it off the event loop.
    """

    def __init__(self, home: HubHome, config: HubConfig) -> None:
        self.home = home
        self.config = config
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Any, Any]] = {}

    def _cached(self, name: str, key: Any, compute: Callable[[], T]) -> T:
        with self._lock:
            held = self._cache.get(name)
            if held is not None and held[0] == key:
                return cast(T, held[1])
            value = compute()
            self._cache[name] = (key, value)
            return value

    def policy(self) -> Policy:
        try:
            st = self.home.policy.stat()
            key: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        return self._cached("policy", key, lambda: load_policy(self.home.policy))

    def catalog(self) -> list[Published]:
        storage = repository.public_storage(self.home.repository, self.config.repository)
        key = storage.read("metadata/timestamp.json")
        return self._cached("catalog", key, lambda: catalog(self.home, self.config))

    def desired(self, devices: list[Device]) -> dict[str, DesiredState]:
        """Each active device's desired state as the hub publishes it; empty while the policy
        or the repository is unusable (the rollout loop logs why)."""
        try:
            policy, published = self.policy(), self.catalog()
        except SpokeError:
            return {}
        views = [device_view(d) for d in devices if d.revoked_at is None]
        key = (policy, tuple(published),
               json.dumps([(v.id, v.labels, v.reported, v.os) for v in views], sort_keys=True))
        return self._cached("desired", key, lambda: desired_states(policy, published, views))


def current_desired(
    home: HubHome, config: HubConfig, registry: Registry
) -> dict[str, DesiredState]:
    """Each device's desired state as the hub publishes it now (the CLI's one-off read)."""
    return PlacementInputs(home, config).desired(registry.devices())


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
    middleware (provisioning/auth) refuses anyone else before a handler runs.

    Each handler reads the registry in a worker thread (``asyncio.to_thread``): the hub's
    event loop keeps taking device messages while a page of a large fleet is put together."""

    def __init__(self, home: HubHome, config: HubConfig, registry: Registry) -> None:
        self.home = home
        self.config = config
        self.registry = registry
        self.placement = PlacementInputs(home, config)

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

    def _known(self, request: web.Request) -> Device:
        device_id = request.match_info["device"]
        device = self.registry.device(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}; see GET /api/v1/devices")
        return device

    async def devices(self, request: web.Request) -> web.Response:
        """``?selector=site in (a,b)&limit=100&cursor=...``: one page of the filtered fleet."""
        limit = _int(request, "limit", 100, 1, 500)

        def read() -> dict[str, Any]:
            desired = self.placement.desired(self.registry.devices())
            return device_page(self.registry, request.query.get("selector", ""), limit,
                               request.query.get("cursor"), desired).as_dict()

        try:
            body = await asyncio.to_thread(read)
        except SpokeError as exc:
            raise BadRequest(str(exc)) from exc
        return web.json_response(body)

    async def device(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self._device, request))

    def _device(self, request: web.Request) -> dict[str, Any]:
        device = self._known(request)
        alert_events = self.registry.events(device.id, kind="alert", limit=ALERT_EVENTS)
        desired = self.placement.desired(self.registry.devices()).get(device.id)
        summary = summarize(device, self.registry.latest_health(device.id), alert_events,
                            desired=desired.model.version if desired and desired.model else None)
        history = sorted(
            (e for k in HISTORY_KINDS for e in self.registry.events(device.id, kind=k, limit=50)),
            key=lambda e: -e["ts"],
        )
        return summary.as_dict() | {
            "alerts": with_acks(self.registry, summary.alerts),
            "desired": desired.model_dump(mode="json", exclude_none=True) if desired else None,
            "os": (device.state or {}).get("os"),
            "system": (device.state or {}).get("system"),
            "model_history": history[:50],
            "recent_alerts": alert_events[:20],
            "recent_events": self.registry.events(device.id, limit=20),
        }

    async def health(self, request: web.Request) -> web.Response:
        """``?limit=120&before=TS``: chart points, newest last; ``next_before`` pages back."""
        limit = _int(request, "limit", HEALTH_HISTORY, 1, HEALTH_HISTORY)
        before = _float(request, "before")

        def read() -> dict[str, Any]:
            device = self._known(request)
            snapshots = [
                s for s in self.registry.health_history(device.id)
                if before is None or s["taken_at_s"] < before
            ]
            page = snapshots[:limit]
            return {
                "points": [asdict(health_point(s)) for s in reversed(page)],
                "next_before": page[-1]["taken_at_s"] if len(snapshots) > limit else None,
            }

        return web.json_response(await asyncio.to_thread(read))

    async def rollouts(self, request: web.Request) -> web.Response:
        def read() -> dict[str, Any]:
            policy, published = self.placement.policy(), self.placement.catalog()
            devices = [
                DeviceView(d.id, d.labels, dict((d.state or {}).get("model") or {}))
                for d in self.registry.devices()
                if d.revoked_at is None
            ]
            events = self.registry.events(kind=ROLLED_BACK, limit=10_000)
            return {"rules": [asdict(r) for r in rollouts(policy, published, devices, events)]}

        try:
            body = await asyncio.to_thread(read)
        except SpokeError as exc:
            raise BadRequest(str(exc)) from exc
        return web.json_response(body)

    async def findings(self, request: web.Request) -> web.Response:
        """``?days=30``: detection summaries of the last N days (numbers only, no images)."""
        days = _int(request, "days", 30, 1, 366)

        def read() -> dict[str, Any]:
            since = time.time() - days * 86400
            events = [
                e for e in self.registry.events(kind="detection", limit=MAX_FINDING_EVENTS)
                if e["ts"] >= since
            ]
            devices = {d.id: d for d in self.registry.devices()}
            return summarize_findings(events, devices) | {
                "days": days, "truncated": len(events) == MAX_FINDING_EVENTS}

        return web.json_response(await asyncio.to_thread(read))

    async def alerts(self, request: web.Request) -> web.Response:
        """Active alerts fleet-wide (acknowledged or not) and a page of recent alert events."""
        limit = _int(request, "limit", 50, 1, MAX_EVENTS)
        before = _float(request, "before")

        def read() -> dict[str, Any]:
            now = time.time()
            events = alert_events(self.registry)
            active = [
                a
                for d in self.registry.devices()
                if d.revoked_at is None
                for a in summarize(d, None, events.get(d.id, []), now).alerts
            ]
            active.sort(key=lambda a: -a["ts"])
            recent = self.registry.events(kind="alert", limit=limit + 1, before=before)
            return {
                "active": with_acks(self.registry, active),
                "recent": recent[:limit],
                "next_before": recent[limit - 1]["ts"] if len(recent) > limit else None,
            }

        return web.json_response(await asyncio.to_thread(read))

    async def acknowledge(self, request: web.Request) -> web.Response:
        """Record that the signed-in operator has seen this raised alert (the first ack stands)."""
        event_id = request.match_info["event"]
        operator = operator_of(request)
        ack = await asyncio.to_thread(self.registry.acknowledge, event_id, operator)
        if ack is None:
            raise NotFound(f"no alert event {event_id!r}; see GET /api/v1/alerts")
        return web.json_response({"event_id": event_id, "acknowledged": ack})
