"""Zero-touch provisioning: find a bundle, verify it, enroll, and hand over the identity.

It never gives up: with no bundle it keeps looking (a technician may plug a stick in later),
with the hub unreachable it retries with backoff, and it reports why it is stuck in the
status file the whole time.
"""

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from appliance import __version__
from appliance.bundle import BundlePayload, load_trust_key, verify_bundle
from appliance.config import HubLinkSection
from appliance.errors import BundleError, EnrollmentRefused, IdentityError, LinkError
from appliance.fsutil import atomic_write
from appliance.keystore import KeyStore
from appliance.mqtt import Backoff
from appliance.service import TaskGroupService
from daemon.hub import bundle_finder, hardware
from daemon.hub.enroll import enroll
from daemon.state import Identity, StateDir, StatusFile, clean_leftovers, load_identity

log = logging.getLogger(__name__)

BUNDLE_POLL_S = 5.0


def read_verified_bundle(path: Path, trust_key: Path) -> BundlePayload:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}") from exc
    try:
        return verify_bundle(data, load_trust_key(trust_key))
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc


class Provisioner(TaskGroupService):
    name = "provisioner"

    def __init__(
        self,
        state: StateDir,
        config: HubLinkSection,
        keys: KeyStore,
        status: StatusFile,
        trust_key: Path,
        explicit_bundle: Path | None,
        boot_dir: Path,
        on_enrolled: Callable[[Identity], Awaitable[None]],
        server_names: Callable[[], list[str]] = list,
    ) -> None:
        """``server_names``: what the API's hub-issued server certificate should name."""
        super().__init__()
        self.state = state
        self.config = config
        self.keys = keys
        self.status = status
        self.trust_key = trust_key
        self.explicit_bundle = explicit_bundle
        self.boot_dir = boot_dir
        self.on_enrolled = on_enrolled
        self.server_names = server_names

    async def start(self) -> None:
        clean_leftovers(self.state)
        self.spawn(self._run(), "provision")

    async def stop(self) -> None:
        await self.cancel_tasks()

    def _stuck(self, state: str, reason: str, expired: Identity | None) -> None:
        """Say why provisioning cannot go on; an expired certificate is said first."""
        if expired is not None:
            when = time.strftime(
                "%Y-%m-%d %H:%M UTC", time.gmtime(expired.cert_summary()["not_after"])
            )
            reason = f"certificate expired at {when}; re-enrolling needs a valid bundle: {reason}"
            state = "certificate-expired"
        self.status.provisioning(state, reason)

    async def _key_opens(self, ident: Identity) -> bool:
        """A TPM-sealed key opens only in the TPM that sealed it: a copied disk stops here,
        saying why, instead of failing every TLS handshake."""
        try:
            # Unsealed once (a TPM round trip, off the event loop) and kept for TLS.
            await asyncio.to_thread(ident.keys.tls_path, ident.cert.parent)
        except IdentityError as exc:
            self.status.set("device_id", ident.device_id)
            self.status.provisioning("key-unusable", str(exc))
            log.error("device key unusable", extra={"reason": str(exc)})
            return False
        return True

    def _find_bundle(self, expired: Identity | None) -> BundlePayload | None:
        places = bundle_finder.candidates(self.explicit_bundle, self.state.bundle, self.boot_dir)
        if not places:
            where = bundle_finder.searched_places(self.state.bundle, self.boot_dir)
            self._stuck("waiting-for-bundle", f"no bundle found in {where}", expired)
            return None
        errors = []
        for path in places:
            try:
                bundle = read_verified_bundle(path, self.trust_key)
            except BundleError as exc:
                errors.append(str(exc))
                continue
            if path != self.state.bundle:
                atomic_write(self.state.bundle, path.read_bytes(), mode=0o600)
            return bundle
        self._stuck("bundle-refused", "; ".join(errors), expired)
        log.error("bundle refused", extra={"reason": "; ".join(errors)})
        return None

    async def _run(self) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_cap_s)
        while True:
            ident = load_identity(self.state, self.keys)
            if ident is not None and not ident.expired():
                if not await self._key_opens(ident):
                    await asyncio.sleep(self.config.backoff_cap_s)
                    continue
                shutil.rmtree(self.state.pending, ignore_errors=True)
                self.status.set("device_id", ident.device_id)
                self.status.set("certificate", ident.cert_summary())
                self.status.provisioning("enrolled")
                await self.on_enrolled(ident)
                return
            expired = ident
            if expired is not None:
                self.status.set("device_id", expired.device_id)
                self.status.set("certificate", expired.cert_summary())
            bundle = self._find_bundle(expired)
            if bundle is None:
                await asyncio.sleep(BUNDLE_POLL_S)
                continue
            self.status.provisioning(
                "enrolling", f"asking {bundle.hub.host}:{bundle.hub.mqtt_port}"
            )
            try:
                facts = await asyncio.to_thread(hardware.facts)
                await enroll(
                    self.state,
                    bundle,
                    facts,
                    __version__,
                    self.config.enroll_timeout_s,
                    self.keys,
                    expired=expired,
                    server_names=self.server_names(),
                )
            except LinkError as exc:
                delay = backoff.next_delay()
                self._stuck("hub-unreachable", str(exc), expired)
                log.warning(
                    "enrollment failed; will retry",
                    extra={"error": str(exc), "retry_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)
            except (EnrollmentRefused, IdentityError) as exc:
                self._stuck("enrollment-refused", str(exc), expired)
                log.error("enrollment refused", extra={"reason": str(exc)})
                await asyncio.sleep(self.config.backoff_cap_s)
