"""The hub's side of model delivery at run time: keep the repository fresh, publish desired state.

- Every ``refresh_interval_s`` it re-signs online metadata that is past half its lifetime (the
  timestamp expires after a day by default, so a hub that stops refreshing freezes no one: the
  appliances refuse the stale metadata).
- Every ``rollout_interval_s`` it recomputes each device's desired model and OS version
  with the pure ``placement.desired_states`` (policy + published versions + reported states)
  and publishes it, retained, to every device whose desired state changed. That covers a
  device joining, its labels changing, a new policy and a new published version alike, and a
  canary's progress. After a broker reconnect everything is published again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from appliance import topics
from appliance.config import HubConfig
from appliance.delivery import DesiredState
from appliance.errors import LinkError, SpokeError
from appliance.fsutil import file_lock
from appliance.osupdate import OS_NAME
from appliance.service import TaskGroupService
from provisioning import osupdates, repository
from provisioning.home import HubHome
from provisioning.hub import HubService
from provisioning.placement import DeviceView, Published, desired_states, load_policy
from provisioning.registry import Device, Registry

log = logging.getLogger(__name__)


def catalog(home: HubHome, config: HubConfig) -> list[Published]:
    if not repository.exists(home.repository, config.repository):
        return []
    repo = repository.open_repository(home.repository, config.repository)
    return [
        Published(str(m["name"]), str(m["version"]), str(m["target"]))
        for m in repo.models()
        if m["name"] and m["version"]
    ] + [Published(OS_NAME, str(o["version"]), str(o["target"]))
         for o in osupdates.os_versions(repo) if o["version"]]


def device_view(device: Device) -> DeviceView:
    """What placement reads of a registered device: labels, reported model and OS."""
    state = device.state or {}
    return DeviceView(device.id, device.labels, dict(state.get("model") or {}),
                      dict(state.get("os") or {}))


def fleet_desired(home: HubHome, config: HubConfig, registry: Registry) -> dict[str, DesiredState]:
    """Every active device's desired state, as the hub publishes it now."""
    devices = [device_view(d) for d in registry.devices() if d.revoked_at is None]
    return desired_states(load_policy(home.policy), catalog(home, config), devices)


def desired_payloads(
    home: HubHome, config: HubConfig, registry: Registry
) -> dict[str, tuple[DesiredState, str]]:
    """Every active device's desired state and the JSON the hub publishes for it."""
    desired = fleet_desired(home, config, registry)
    return {d: (s, s.model_dump_json(exclude_none=True)) for d, s in desired.items()}


class RolloutService(TaskGroupService):
    name = "rollout"

    def __init__(
        self, home: HubHome, config: HubConfig, registry: Registry, hub: HubService
    ) -> None:
        super().__init__()
        self.home = home
        self.config = config
        self.registry = registry
        self.hub = hub
        self._sent: dict[str, str] = {}
        self._session = -1

    async def start(self) -> None:
        repository.ensure_repository(self.home.repository, self.home.offline_keys,
                                     self.config.repository)
        self.spawn(self._refresh_loop(), "refresh")
        self.spawn(self._rollout_loop(), "rollout")

    async def stop(self) -> None:
        await self.cancel_tasks()

    def _refresh(self) -> list[str]:
        with file_lock(self.home.repository):
            repo = repository.open_repository(self.home.repository, self.config.repository)
            return repo.refresh()

    async def _refresh_loop(self) -> None:
        while True:
            try:
                renewed = await asyncio.to_thread(self._refresh)
                if renewed:
                    log.info("repository metadata re-signed", extra={"roles": renewed})
            except SpokeError as exc:
                log.error("repository refresh failed", extra={"error": str(exc)})
            await asyncio.sleep(self.config.repository.refresh_interval_s)

    async def _rollout_loop(self) -> None:
        while True:
            with contextlib.suppress(LinkError):
                await self.publish_changes()
            await asyncio.sleep(self.config.repository.rollout_interval_s)

    async def publish_changes(self) -> dict[str, Any]:
        if not self.hub.connected.is_set():
            return {}
        if self.hub.sessions != self._session:
            self._sent.clear()
            self._session = self.hub.sessions
        try:
            # Off the loop: at 10,000 devices a tick is ~190 ms of CPU (the whole registry
            # read, a desired state and its JSON per device), which held up the hub's ingest.
            desired = await asyncio.to_thread(desired_payloads, self.home, self.config,
                                              self.registry)
        except SpokeError as exc:
            log.error("cannot compute desired state", extra={"error": str(exc)})
            return {}
        changed = {}
        for device, (state, payload) in desired.items():
            if self._sent.get(device) == payload:
                continue
            await self.hub.publish(topics.desired(device), payload, retain=True)
            self._sent[device] = payload
            changed[device] = state
            log.info("desired state published", extra={"device": device, "desired": payload})
        return changed
