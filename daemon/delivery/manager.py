"""The active model, for whoever runs inference (the uplink API, the health gate's probes).

``ModelManager.current()`` returns the ``LoadedModel`` (artifact, backend, pipeline) or None.
To run inference, take a lease::

    with manager.lease() as active:          # raises NoActiveModel when there is none
        result = active.pipeline.run(data)   # outcome counted by the health gate

A swap replaces the reference at once: requests that already hold a lease finish on the old
model, new ones get the new model, and the old backend is closed only when its last lease ends.
So a swap neither drops nor fails a request in flight. The ``on_activate`` callback given at
construction runs (in the thread that swapped) with the new ``LoadedModel`` or None.

Backends are "one caller at a time" (see ``models.backends.base``): a server should still feed
``active.backend`` from one inference worker; the lease makes no promise about concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon.uplink.provider import NoActiveModel

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    sha256: str
    name: str
    version: str
    artifact: Any  # models.artifact.Artifact
    backend: Any  # models.backends.Backend
    pipeline: Any  # models.pipeline.Pipeline
    _leases: int = field(default=0, repr=False)
    _retired: bool = field(default=False, repr=False)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "version": self.version, "sha256": self.sha256}
        with contextlib.suppress(Exception):
            info["backend"] = self.backend.describe()
        return info


Observer = Callable[[LoadedModel, bool, str | None], None]


OnActivate = Callable[[LoadedModel | None], None]


class ModelManager:
    def __init__(self, on_activate: OnActivate | None = None) -> None:
        self._lock = threading.Lock()
        self._active: LoadedModel | None = None
        self.on_activate = on_activate
        #: Called after every lease with (model, ok, error): the health gate listens here.
        self.observers: list[Observer] = []

    def current(self) -> LoadedModel | None:
        return self._active

    @contextlib.contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        with self._lock:
            active = self._active
            if active is None:
                raise NoActiveModel("no model is active on this appliance yet")
            active._leases += 1
        ok, error = True, None
        try:
            yield active
        except asyncio.CancelledError:
            raise  # the caller is shutting down: not the model's fault
        except BaseException as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with self._lock:
                active._leases -= 1
                close = active._retired and active._leases == 0
            for observer in list(self.observers):
                try:
                    observer(active, ok, error)
                except Exception:
                    log.exception("model observer failed")
            if close:
                _close(active)

    def record(self, model: LoadedModel, ok: bool, error: str | None = None) -> None:
        """Report an inference outcome the lease did not see (a caller that catches a model
        error itself and marks the request failed should call this, so the health gate counts
        it)."""
        for observer in list(self.observers):
            try:
                observer(model, ok, error)
            except Exception:
                log.exception("model observer failed")

    def swap(self, new: LoadedModel | None, retire_old: bool = True) -> LoadedModel | None:
        """Make ``new`` the active model. The old one is closed once no lease holds it, unless
        ``retire_old`` is False (the reconciler keeps it ready for a rollback, then retires it).
        """
        with self._lock:
            old, self._active = self._active, new
        if retire_old and old is not None and old is not new:
            self.retire(old)
        if self.on_activate is not None:
            try:
                self.on_activate(new)
            except Exception:
                log.exception("on_activate callback failed")
        return old

    def retire(self, model: LoadedModel) -> None:
        """Close ``model`` as soon as its last lease ends (now, if it has none)."""
        with self._lock:
            if model is self._active or model._retired:
                return
            model._retired = True
            close = model._leases == 0
        if close:
            _close(model)


def _close(model: LoadedModel) -> None:
    try:
        model.backend.close()
    except Exception:
        log.exception("closing a retired backend failed", extra={"version": model.version})
