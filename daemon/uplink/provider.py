"""Where the uplink gets its model: a ``ModelProvider``, the same shape as
``daemon.delivery.manager.ModelManager`` so the manager plugs in as it is.

The contract:

- ``provider.current()`` returns the active model or None; it is called on the event loop
  (``/readyz``, and before each image), so it must be cheap and never block;
- ``provider.lease()`` is a context manager yielding the active model (raising when there is
  none); the uplink holds one lease per image for the whole of its processing, so a swap lets
  running images finish on the old model and the owner closes the old backend when its last
  lease ends;
- a model (``ServedModel``) has ``name``, ``version``, ``artifact`` (``models.artifact
  .Artifact``) and ``backend`` (``models.backends.Backend``); the uplink batches together only
  tiles of the same model object and feeds each backend from one thread.

``StaticModel`` is the provider of ``spoke run --model DIR`` (and ``--standalone``): one fixed
model, loaded once. ``NoModel`` is the provider of an appliance without one: ``/readyz`` says
not ready and accepted images wait in the queue.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from appliance.errors import SpokeError
from appliance.service import TaskGroupService

if TYPE_CHECKING:
    from models.artifact import Artifact
    from models.backends.base import Backend

log = logging.getLogger(__name__)


class ServedModel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def artifact(self) -> Any: ...

    @property
    def backend(self) -> Any: ...


class ModelProvider(Protocol):
    def current(self) -> ServedModel | None: ...

    def lease(self) -> contextlib.AbstractContextManager[Any]: ...


class NoActiveModel(SpokeError):
    """No model is active (none delivered yet, or every candidate was refused)."""


@dataclass(eq=False)
class LoadedArtifact:
    """A loaded artifact and its backend (what ``StaticModel`` serves)."""

    artifact: Artifact
    backend: Backend

    @property
    def name(self) -> str:
        return self.artifact.card.name

    @property
    def version(self) -> str:
        return self.artifact.card.version


class NoModel:
    def current(self) -> ServedModel | None:
        return None

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServedModel]:
        raise NoActiveModel("no model is active on this appliance")
        yield  # pragma: no cover


class StaticModel:
    """One fixed model. ``load`` is blocking (it validates the artifact; ``auto`` times the
    backends): run it off the loop, e.g. through ``StaticModelLoader``."""

    def __init__(self, model_dir: Path, backend: str = "auto", batch_size: int = 32) -> None:
        self.model_dir = model_dir
        self.backend_name = backend
        self.batch_size = batch_size
        self.model: LoadedArtifact | None = None

    @classmethod
    def of(cls, artifact: Artifact, backend: Backend) -> StaticModel:
        """Already loaded (tests, benchmarks)."""
        provider = cls(artifact.root, backend.name)
        provider.model = LoadedArtifact(artifact, backend)
        return provider

    def load(self) -> LoadedArtifact:
        from models.artifact import load_artifact
        from models.backends import create_backend

        artifact = load_artifact(self.model_dir)
        backend = create_backend(artifact, self.backend_name, batch_size=self.batch_size)
        self.model = LoadedArtifact(artifact, backend)
        return self.model

    def current(self) -> ServedModel | None:
        return self.model

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServedModel]:
        if self.model is None:
            raise NoActiveModel(f"the model in {self.model_dir} is not loaded yet")
        yield self.model

    def close(self) -> None:
        if self.model is not None:
            self.model.backend.close()
            self.model = None


class StaticModelLoader(TaskGroupService):
    """Loads a ``StaticModel`` in the background once the daemon is up (so ``/healthz`` answers
    and ``/readyz`` says not ready meanwhile); a model that cannot load stops the daemon."""

    name = "static-model"

    def __init__(self, provider: StaticModel, on_loaded: Any = None) -> None:
        super().__init__()
        self.provider = provider
        self.on_loaded = on_loaded

    async def start(self) -> None:
        self.spawn(self._load(), "load")

    async def _load(self) -> None:
        import asyncio

        model = await asyncio.to_thread(self.provider.load)
        info = model.backend.describe()
        # engine_choice: "cache" when auto reused its stored pick, "measured" when it measured
        log.info("model loaded", extra={"model": f"{model.name}@{model.version}",
                                        "backend": info["backend"],
                                        "precision": info["precision"],
                                        "engine_choice": info.get("auto", {}).get("source",
                                                                                  "named")})
        if self.on_loaded is not None:
            self.on_loaded(model)

    async def stop(self) -> None:
        await self.cancel_tasks()
        self.provider.close()
