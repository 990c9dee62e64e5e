"""The model reconciler: desired state in, a verified and health-gated active model out.

It runs on a desired-state hint from the hub and every ``reconcile_interval_s``:

1. resolve the desired target through TUF (worker thread, file-locked cache);
2. refuse a downgrade the hub did not pin (rollback protection beyond TUF);
3. download it (resumable, bounded by the signed length and a total deadline), verify it and
   store it content-addressed;
4. prepare it: backend session plus the card's golden smoke test;
5. activate it: atomic symlink swap plus an in-memory swap that drains in-flight requests;
6. health gate: commit after N good inferences or T quiet seconds, else roll back on its own;
7. keep the newest K versions.

Every refusal leaves the active model untouched and goes to the hub twice: as an event through
the durable outbox and as ``model.last_error`` in the reported state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from appliance.config import ModelsSection
from appliance.delivery import FINAL_REFUSALS, DesiredModel, DesiredState
from appliance.errors import SpokeError
from appliance.service import Notify, TaskGroupService, tell, unheard
from daemon.delivery.download import download_target
from daemon.delivery.errors import DeliveryInterrupted, ModelRefused
from daemon.delivery.fetch import RangeFetcher
from daemon.delivery.gate import HealthGate, downgrade_refusal
from daemon.delivery.journal import Journal, Refusal
from daemon.delivery.manager import LoadedModel, ModelManager, OnActivate
from daemon.delivery.store import META_FILE, ModelStore
from daemon.delivery.tufclient import Resolved, TufClient

log = logging.getLogger(__name__)

Prepare = Callable[..., LoadedModel]  # (path, backend, artifact=None) -> LoadedModel
Emit = Callable[[str, dict[str, Any]], object]
T = TypeVar("T")


def validate_artifact(path: Path, expect: dict[str, Any]) -> Any:
    """A store entry must be a valid artifact whose card is the one the signed target names.
    Returns the loaded ``Artifact`` (so preparing it does not hash the files a second time)."""
    from models.artifact import load_artifact
    from models.errors import ModelError

    card_sha = hashlib.sha256((path / "card.json").read_bytes()).hexdigest()
    if expect.get("card_sha256") and card_sha != expect["card_sha256"]:
        raise ModelRefused("bad-artifact", "card.json is not the one the target metadata signs")
    try:
        artifact = load_artifact(path)
    except ModelError as exc:
        raise ModelRefused("bad-artifact", str(exc)) from exc
    card = artifact.card
    if (card.name, card.version) != (expect.get("name"), expect.get("version")):
        raise ModelRefused(
            "target-mismatch",
            f"the artifact is {card.ref}, the signed target says "
            f"{expect.get('name')}@{expect.get('version')}",
        )
    return artifact


def prepare_model(path: Path, backend: str, artifact: Any = None) -> LoadedModel:
    """Load a store entry (unless ``artifact`` is it, just validated), build its backend and
    smoke-test it with the card's golden input."""
    from models.artifact import load_artifact
    from models.backends import create_backend
    from models.pipeline import Pipeline

    meta = json.loads((path / META_FILE).read_text())
    if artifact is None:
        try:
            artifact = load_artifact(path)
        except SpokeError as exc:
            raise ModelRefused("bad-artifact", str(exc)) from exc
    try:
        engine = create_backend(artifact, backend)
    except SpokeError as exc:
        raise ModelRefused("smoke-test", f"no backend could run it: {exc}") from exc
    try:
        engine.smoke_test()
    except SpokeError as exc:
        engine.close()
        raise ModelRefused("smoke-test", str(exc)) from exc
    return LoadedModel(
        sha256=meta["sha256"],
        name=artifact.card.name,
        version=artifact.card.version,
        artifact=artifact,
        backend=engine,
        pipeline=Pipeline(artifact, engine),
    )


class ModelService(TaskGroupService):
    name = "models"

    def __init__(
        self,
        root: Path,
        config: ModelsSection,
        emit: Emit,
        prepare: Prepare = prepare_model,
        clock: Callable[[], float] = time.monotonic,
        on_change: Notify = unheard,
        on_activate: OnActivate | None = None,
    ) -> None:
        """``clock`` times the health gate (its pure core, ``daemon.delivery.gate``, is tested
        on a clock moved by hand);
        ``on_change`` runs whenever ``reported()`` may say something new; ``on_activate`` with
        each model the manager swaps in (or None)."""
        super().__init__()
        self.clock = clock
        self.config = config
        self.store = ModelStore(root)
        self.manager = ModelManager(on_activate)
        self.emit = emit
        self.prepare = prepare
        self.tuf: TufClient | None = None
        self._gate: HealthGate | None = None
        self._no_gate = asyncio.Event()
        self._no_gate.set()
        self.on_change = on_change
        self._wake = asyncio.Event()
        self._reload = False
        self._fallback: LoadedModel | None = None
        self._retry_s = config.retry_initial_s
        self._busy = asyncio.Lock()
        self._bytes_at_start = 0
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self.manager.observers.append(self._observe)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.resume()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_reload)
        self.spawn(self._loop(), "reconcile")

    @property
    def gate(self) -> HealthGate | None:
        """The health gate of the model on probation, or None."""
        return self._gate

    @gate.setter
    def gate(self, gate: HealthGate | None) -> None:
        self._gate = gate
        if gate is None:
            self._no_gate.set()
        else:
            self._no_gate.clear()

    async def gate_closed(self) -> None:
        """Return once no model is on probation: its gate committed it, rolled it back, or
        the service stopped."""
        await self._no_gate.wait()

    async def resume(self) -> None:
        """What ``start`` does before its background loop: recover the store, serve the
        current model, give a model on probation a fresh gate. (Tests that drive each
        reconcile pass themselves call this alone.)"""
        self._loop_ref = asyncio.get_running_loop()
        for line in await self._locked(self.store.recover):
            log.warning("model store recovery: %s", line)
        await self._load_current()
        self._resume_gate(await self._journal())

    def _resume_gate(self, journal: Journal) -> None:
        """After a clean stop during probation, the model being served gets a fresh gate."""
        probation = journal.probation
        active = self.manager.current()
        if probation and active is not None and active.sha256 == probation.sha256:
            self.gate = self._new_gate()

    def _new_gate(self) -> HealthGate:
        return HealthGate(self.clock(), self.config.gate_good_inferences,
                          self.config.gate_quiet_s, self.config.gate_max_errors)

    async def stop(self) -> None:
        await self.cancel_tasks()
        if self.gate is not None:
            # Stopped on purpose mid-gate: say so, or the next start would take it for a
            # crash caused by the new model and roll it back.
            await self._edit(lambda journal: journal.pause_probation())
            self.gate = None
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self.manager.swap(None)
        if self._fallback is not None:
            self._fallback.backend.close()
            self._fallback = None

    def attach(self, root: bytes, base_url: str, fetcher: RangeFetcher) -> None:
        """The hub link is up: the repository at ``base_url``, trusted from ``root``."""
        self.tuf = TufClient(self.store.tuf_cache, root, base_url, fetcher)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def no_trust_root(self) -> None:
        """The bundle carried no TUF root: no model can be verified, so none is installed."""
        last = (await self._journal()).last_error
        if last is None or last.code != "no-trust-root":
            await self._refused(None, "no-trust-root", "the provisioning bundle carries no TUF "
                                "root; re-provision with a bundle from a hub that has a model "
                                "repository", final=False)

    def request_reload(self) -> None:
        """``spoke models activate|rollback`` changed the store: serve what it says now."""
        self._reload = True
        self._wake.set()

    async def on_desired(self, payload: bytes) -> None:
        """A desired-state hint from the hub (retained, so it also arrives on every connect)."""
        try:
            desired = DesiredState.model_validate_json(payload) if payload else DesiredState()
        except ValidationError as exc:
            log.warning("ignored malformed desired state", extra={"error": str(exc)})
            return
        await self._edit(lambda journal: journal.desire(desired))
        log.info("desired state", extra={"desired": desired.model_dump(mode="json")})
        self.wake()

    # --- what the hub and the API see ---------------------------------------------------------

    def reported(self) -> dict[str, Any]:
        journal = self.store.journal()
        active = self.manager.current()
        desired = journal.desired_model
        last_error = journal.last_error
        return {
            "name": active.name if active else None,
            "version": active.version if active else None,
            "sha256": active.sha256 if active else None,
            "state": str(journal.phase(active is not None)),
            "desired": f"{desired.name}@{desired.version}" if desired else None,
            "hold": journal.hold is not None,
            "last_error": last_error.model_dump(mode="json", exclude={"final", "desired"})
            if last_error else None,
        }

    async def _changed(self) -> None:
        await tell(self.on_change)

    # --- the store's lock: never on the event loop ----------------------------------------------

    async def _locked(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(*args)`` holding the store's lock, in a worker thread.

        The lock is a ``flock`` (shared with ``spoke models``), and each taker opens its own
        file, so a second taker in this process waits like any other. Taken on the event loop,
        it stops the loop while someone else holds it; held across an ``await``, a second taker
        on the loop waits for a holder that can never resume, and the loop stops for good (the
        fault scenario "power cut mid model download": a desired state arrived from the hub
        while activation held the lock, after "model prepared", and the daemon hung)."""

        def run() -> T:
            with self.store.locked():
                return work(*args)

        return await asyncio.to_thread(run)

    async def _journal(self) -> Journal:
        """The journal as last saved, read off the loop. A save replaces the file whole
        (``atomic_write``), so a read needs no lock, and does not wait for one held elsewhere
        (``spoke models``, or activation in a worker thread)."""
        return await asyncio.to_thread(self.store.journal)

    def _roll_back(self, reason: str) -> tuple[str | None, DesiredModel | None]:
        """Roll back, and read the desired model the failed one was for, under one hold of
        the lock (run it with ``_locked``): a desired state that arrives afterwards, while the
        previous model loads again, is not blamed for the failure."""
        return self.store.rollback(reason), self.store.journal().desired_model

    async def _edit(self, change: Callable[[Journal], T]) -> T:
        """Change the journal on disk (read, ``change``, save) under the lock, off the loop."""

        def run() -> T:
            with self.store.editing() as journal:
                return change(journal)

        return await asyncio.to_thread(run)

    # --- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            timeout = self.config.reconcile_interval_s
            if self.gate is not None:
                timeout = 0.5
            elif self._retry_s != self.config.retry_initial_s:
                timeout = min(timeout, self._retry_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                async with self._busy:
                    if self._reload:
                        # The operator chose a model by hand: that ends any health gate.
                        self._reload = False
                        self.gate = None
                        if self._fallback is not None:
                            self.manager.retire(self._fallback)
                            self._fallback = None
                        await self._load_current()
                    if self.gate is not None:
                        await self.check_gate()
                    else:
                        await self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    async def reconcile(self) -> None:
        """One pass: bring the active model to the desired one, or say why not."""
        journal = await self._journal()
        desired = journal.desired_model
        if desired is None or self.tuf is None or journal.probation or journal.held():
            return
        active = self.manager.current()
        if active and (active.name, active.version) == (desired.name, desired.version):
            return
        try:
            await self._deliver(desired, journal)
            self._retry_s = self.config.retry_initial_s
        except ModelRefused as exc:
            await self._refused(desired, exc.code, exc.reason,
                                final=exc.code in FINAL_REFUSALS, sha=getattr(exc, "sha256", None))
            self._backoff()
            await self._changed()
        except DeliveryInterrupted as exc:
            await self._refused(desired, exc.code, exc.reason, final=False,
                                kind="model_interrupted")
            self._backoff()
            await self._changed()

    def _backoff(self) -> None:
        self._retry_s = min(self._retry_s * 2, self.config.retry_cap_s)

    async def _deliver(self, desired: DesiredModel, journal: Journal) -> None:
        tuf = self.tuf
        assert tuf is not None
        self._bytes_at_start = tuf.fetcher.bytes_received
        resolved: Resolved = await asyncio.to_thread(tuf.resolve, desired.target)
        sha = resolved.sha256
        if journal.refused_for_good(sha, desired):
            return  # refused for good and reported; wait for another desired state
        try:
            await self._deliver_resolved(desired, journal, resolved)
        except ModelRefused as exc:
            exc.sha256 = sha  # type: ignore[attr-defined]
            raise

    async def _deliver_resolved(
        self, desired: DesiredModel, journal: Journal, resolved: Resolved
    ) -> None:
        sha, custom = resolved.sha256, resolved.info.custom or {}
        if (custom.get("name"), custom.get("version")) != (desired.name, desired.version):
            raise ModelRefused(
                "target-mismatch",
                f"{resolved.info.path} is signed as {custom.get('name')}@{custom.get('version')}",
            )
        committed = self.store.meta(journal.committed) if journal.committed else None
        why = downgrade_refusal(
            desired.version, committed.get("version") if committed else None, desired.pinned
        )
        if why:
            raise ModelRefused("downgrade", why)
        meta = {
            "sha256": sha,
            "length": resolved.info.length,
            "target": resolved.info.path,
            "name": custom.get("name"),
            "version": custom.get("version"),
            "card_sha256": custom.get("card_sha256"),
            "installed_at": time.time(),
        }
        fresh = None
        if not self.store.has(sha):
            fresh = await asyncio.to_thread(self._download_and_install, resolved, meta)
        started = time.monotonic()
        model = await asyncio.to_thread(self.prepare, self.store.path(sha), self.config.backend,
                                        artifact=fresh)
        log.info("model prepared", extra={"model": f"{model.name}@{model.version}",
                                          "seconds": round(time.monotonic() - started, 2)})
        await self._activate(model, f"desired {desired.name}@{desired.version}")

    def _download_and_install(self, resolved: Resolved, meta: dict[str, Any]) -> Any:
        assert self.tuf is not None
        started = time.monotonic()
        partial = self.store.partial(resolved.sha256)
        resumed_from = partial.stat().st_size if partial.exists() else 0
        log.info("downloading model", extra={"target": resolved.info.path,
                                             "bytes": resolved.info.length,
                                             "resume_from": resumed_from})
        download_target(self.tuf.fetcher, resolved.url, resolved.info, partial,
                        started + self.config.download_deadline_s)
        log.info("downloaded model", extra={"target": resolved.info.path,
                                            "seconds": round(time.monotonic() - started, 2)})
        validated: dict[str, Any] = {}

        def validate(path: Path) -> None:
            validated["artifact"] = validate_artifact(path, meta)

        started = time.monotonic()
        # No store lock here: the entry is built in a private directory and renamed into place
        # (the lock is a flock the event loop also takes, and this can take seconds).
        dest = self.store.install(partial, meta, validate)
        log.info("model verified and stored", extra={"target": resolved.info.path,
                                                     "seconds": round(time.monotonic() - started,
                                                                      2)})
        artifact = validated.get("artifact")
        if artifact is not None:
            artifact.root = dest  # validated in the temporary directory renamed to dest
        return artifact

    async def activate_local(self, sha: str, reason: str) -> None:
        """Activate a model this appliance installed in the store itself (a promoted fine-tune,
        see ``daemon/finetune/promote.py``) by the path a delivered one takes: smoke test, atomic
        swap, health gate, rollback. Like ``spoke models activate``, it holds against the hub's
        desired state until the hub desires something new. Raises ``ModelRefused``."""
        async with self._busy:
            model = await asyncio.to_thread(self.prepare, self.store.path(sha),
                                            self.config.backend)
            await self._edit(lambda journal: journal.hold_at(sha, "finetune", time.time()))
            await self._activate(model, reason)

    async def _activate(self, model: LoadedModel, reason: str) -> None:
        old_sha = await self._locked(self.store.activate, model.sha256, reason)
        old = self.manager.current()
        self._fallback = old if old is not None and old.sha256 == old_sha else None
        self.manager.swap(model, retire_old=False)
        if old is not None and self._fallback is None:
            self.manager.retire(old)
        self.gate = self._new_gate()
        fetched = self.tuf.fetcher.bytes_received - self._bytes_at_start if self.tuf else 0
        self.emit("model_activated", {"name": model.name, "version": model.version,
                                      "sha256": model.sha256, "previous": old_sha,
                                      "reason": reason, "bytes_fetched": fetched})
        log.info("model activated; health gate running",
                 extra={"model": f"{model.name}@{model.version}"})
        await self._changed()
        self.wake()

    def _observe(self, model: LoadedModel, ok: bool, error: str | None) -> None:
        gate = self.gate
        if gate is not None and model is self.manager.current():
            gate.observe(ok, error)
            if gate.verdict(self.clock()) and self._loop_ref is not None:
                # Leases end in inference threads: wake the loop the thread-safe way.
                with contextlib.suppress(RuntimeError):
                    self._loop_ref.call_soon_threadsafe(self._wake.set)

    async def check_gate(self) -> None:
        """Decide the health gate now if it can be decided (the loop calls this every
        half second while a gate runs)."""
        gate, active = self.gate, self.manager.current()
        if gate is None or active is None:
            self.gate = None
            return
        verdict = gate.verdict(self.clock())
        if verdict is None:
            return
        # The gate closes once the journal holds the verdict: whoever waits in gate_closed()
        # then reads it from the store (the Promoter's kept()).
        if verdict == "pass":
            await self._locked(self.store.commit, active.sha256)
        else:
            back, desired = await self._locked(self._roll_back,
                                               f"health gate failed: {gate.reason()}")
        self.gate = None
        fallback, self._fallback = self._fallback, None
        if verdict == "pass":
            if fallback is not None:
                self.manager.retire(fallback)
            self.emit("model_committed", {"name": active.name, "version": active.version,
                                          "sha256": active.sha256, "gate": gate.reason()})
            log.info("model committed", extra={"model": f"{active.name}@{active.version}",
                                               "gate": gate.reason()})
            removed = await self._locked(self.store.gc, self.config.keep_versions)
            if removed:
                log.info("model store gc", extra={"removed": removed})
        else:
            if fallback is not None and fallback.sha256 == back:
                self.manager.swap(fallback)
            else:
                if fallback is not None:
                    self.manager.retire(fallback)
                await self._load_current()
            await self._refused(desired, "health-gate", gate.reason(),
                                final=True, sha=active.sha256, kind="model_rolled_back",
                                model=(active.name, active.version))
        await self._changed()
        self.wake()  # the desired state may have moved on while the gate ran

    async def _load_current(self) -> None:
        """Serve what ``current`` points at; a model that no longer verifies is rolled back."""
        for _ in range(3):
            sha = self.store.current()
            active = self.manager.current()
            if sha is None:
                if active is not None:
                    self.manager.swap(None)
                return
            if active is not None and active.sha256 == sha:
                return
            try:
                model = await asyncio.to_thread(
                    self.prepare, self.store.path(sha), self.config.backend
                )
            except ModelRefused as exc:
                log.error("the current model does not verify; rolling back",
                          extra={"sha256": sha, "error": str(exc)})
                await self._locked(self.store.rollback, f"current model failed to load: {exc}")
                continue
            self.manager.swap(model)
            log.info("serving model", extra={"model": f"{model.name}@{model.version}"})
            await self._changed()
            return

    async def _refused(
        self,
        desired: DesiredModel | None,
        code: str,
        reason: str,
        final: bool,
        sha: str | None = None,
        kind: str = "model_refused",
        model: tuple[str, str] | None = None,
    ) -> None:
        """Record a refusal in the journal and tell the hub once (a retry that fails the same
        way is not news). ``model`` names what failed when no desired state asked for it."""
        active = self.manager.current()
        name, version = (desired.name, desired.version) if desired else model or (None, None)
        refusal = Refusal(
            code=code, reason=reason, name=name, version=version,
            target=desired.target if desired else None, sha256=sha,
            active=f"{active.name}@{active.version}" if active else None,
            ts=time.time(), final=bool(sha and final), desired=desired,
        )
        news = await self._edit(lambda journal: journal.refuse(refusal, kind, time.time()))
        log.warning("model not activated", extra={"code": code, "reason": reason})
        if news:
            self.emit(kind, refusal.model_dump(mode="json", exclude={"final", "desired"}))


def pinned_root(store: ModelStore, bundle: Path, trust_key: Path) -> bytes | None:
    """The TUF root this appliance trusts: pinned from its verified provisioning bundle on first
    use (no trust on first use of the network), then read from the pin."""
    pin = store.tuf_cache / "pinned-root.json"
    if pin.exists():
        return pin.read_bytes()
    from appliance.fsutil import atomic_write
    from daemon.hub.provisioner import read_verified_bundle

    try:
        payload = read_verified_bundle(bundle, trust_key)
    except SpokeError as exc:
        log.error("cannot pin the model repository root", extra={"error": str(exc)})
        return None
    if payload.tuf_root is None:
        return None
    atomic_write(pin, payload.tuf_root)
    return payload.tuf_root.encode()
