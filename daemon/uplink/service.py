"""The uplink service: admission, durable queue, workers, results, events, retention.

Ingestion (``ingest``, shared by the HTTP API and the watch folder):

1. refuse early what costs nothing to refuse: a full queue (429), a type we do not take (415);
2. hash the bytes: the sha256 is the image id; an id we know is answered from the store;
3. decode the image fully, bounded (``models.images.decode_image``: bytes, then pixels before
   any pixel is decoded), on a worker thread: a corrupt file is refused (422) with the
   decoder's reason, a bomb (413) before it costs memory;
4. store the bytes and the row durably (``ResultStore.add``), then queue the id.

Only then does the API answer 202. Workers take ids in order, run decode -> tile on threads,
pool their tiles through the ``TileBatcher`` and write the result. Each finished image puts one
compact event into the daemon's durable outbox, with an id derived from the image and model, so
a crash between the two cannot make the hub count an image twice. After a crash,
``requeue_interrupted`` puts running work back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.config import UplinkSection
from appliance.service import TaskGroupService
from daemon.uplink.batcher import TileBatcher
from daemon.uplink.provider import ModelProvider, NoActiveModel, ServedModel
from daemon.uplink.store import PENDING, StorageFull
from daemon.uplink.tokens import TokenStore

if TYPE_CHECKING:
    from daemon.health.metrics import DaemonMetrics
    from daemon.hub.outbox import Outbox
    from daemon.uplink.store import ResultStore
    from models.images import DecodedImage

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/tiff": "TIFF"}
EXTENSIONS = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
              ".tif": "image/tiff", ".tiff": "image/tiff"}
EVENT_KIND = "detection"
THUMBNAIL_SIDE = 256
MODEL_POLL_S = 0.5
RETENTION_INTERVAL_S = 60.0
STORAGE_RETRY_S = 5


class Refused(Exception):
    """An image the uplink will not take: ``status`` is the HTTP answer, ``code`` the counter
    reason (``spoke_inputs_dropped_total{reason=...}``)."""

    def __init__(self, status: int, code: str, reason: str,
                 retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class Metadata:
    mission: str | None = None
    drone: str | None = None
    captured_at: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str
    created: bool


def event_id(image_id: str, model: ServedModel) -> str:
    """The same image on the same model is the same event, however often it is processed."""
    return hashlib.sha256(f"{image_id}|{model.name}@{model.version}".encode()).hexdigest()[:32]


class UplinkService(TaskGroupService):
    name = "uplink"

    def __init__(self, root: Path, config: UplinkSection, provider: ModelProvider,
                 max_upload_bytes: int, metrics: DaemonMetrics | None = None,
                 outbox: Outbox | None = None) -> None:
        super().__init__()
        self.root = root
        self.config = config
        self.provider = provider
        self.max_upload_bytes = max_upload_bytes
        self.metrics = metrics
        self.outbox = outbox
        self.tokens = TokenStore(root / "tokens.db")
        self.store: ResultStore | None = None
        self.batcher = TileBatcher(config.max_batch_tiles, config.max_wait_ms / 1000,
                                   self._on_batch)
        self._db_exec = ThreadPoolExecutor(1, thread_name_prefix="uplink-db")
        self._cpu = ThreadPoolExecutor(config.workers, thread_name_prefix="uplink-cpu")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._reserved = 0
        self._hot: dict[str, DecodedImage] = {}
        self._image_seconds = 1.0  # moving average, for Retry-After
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        from daemon.uplink.store import ResultStore

        self.store = await self.db(ResultStore, self.root)
        if self.store.orphans_removed:
            log.warning("removed image files a crash left without a row",
                        extra={"count": self.store.orphans_removed})
        for image_id in await self.db(self.store.requeue_interrupted):
            self._enqueue(image_id)
        if self._pending:
            log.info("resuming queued images", extra={"count": len(self._pending)})
        self.batcher.start()
        for i in range(self.config.workers):
            self.spawn(self._worker(), f"worker-{i}")
        self.spawn(self._retention(), "retention")
        if self.config.watch_dir:
            from daemon.uplink.watch import WatchFolder

            watch = WatchFolder(Path(self.config.watch_dir), self.config.watch_stable_s,
                                self.config.watch_incomplete_s)
            self.spawn(self._watch(watch), "watch")
        self._started = True

    async def stop(self) -> None:
        await self.cancel_tasks()
        await self.batcher.stop()
        self._cpu.shutdown(wait=True, cancel_futures=True)
        if self.store is not None:
            await self.db(self.store.close)
        self._db_exec.shutdown(wait=True)
        self.tokens.close()

    # -- helpers -------------------------------------------------------------------------

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every store call runs on the one writer thread, in order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_exec, functools.partial(fn, *args, **kwargs))

    async def _cpu_run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    async def query(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """Read from the store (on the writer thread, so reads see every write before them)."""
        assert self.store is not None
        return await self.db(getattr(self.store, fn_name), *args, **kwargs)

    def _on_batch(self, backend: str, tiles: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.inference_batch_size.labels(backend).observe(tiles)
            self.metrics.inference_latency_seconds.labels(backend).observe(seconds)

    def count_drop(self, code: str) -> None:
        """``spoke_inputs_dropped_total{reason=code}``: called once, where a ``Refused`` is
        caught (and for a refused credential), so no refusal goes uncounted."""
        if self.metrics is not None:
            self.metrics.drop(code)

    def _depth_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels("uplink").set(len(self._pending))

    def _enqueue(self, image_id: str) -> None:
        self._pending.add(image_id)
        self._queue.put_nowait(image_id)
        self._depth_changed()

    def ready(self) -> bool:
        return self._started and self.provider.current() is not None

    def queue_depth(self) -> int:
        return len(self._pending)

    def uploads_in_flight(self) -> int:
        """Bodies being read now: each holds a queue slot (``slot``) until it is queued."""
        return self._reserved

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: about one image's processing time."""
        return max(1, min(60, math.ceil(self._image_seconds)))

    # -- ingestion -----------------------------------------------------------------------

    def admit_type(self, content_type: str) -> None:
        if content_type not in CONTENT_TYPES:
            raise Refused(415, "unsupported_type",
                          f"unsupported media type {content_type or '(none)'!r}; send "
                          f"{', '.join(CONTENT_TYPES)} or multipart/form-data")

    def admit_room(self) -> None:
        """Past ``queue_depth`` images waiting: 429 (call before reading a body, too)."""
        if len(self._pending) + self._reserved >= self.config.queue_depth:
            raise Refused(429, "queue_full",
                          f"the queue is full ({self.config.queue_depth} images waiting); "
                          "retry later", retry_after=self.retry_after())

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a queue slot while a body is read: concurrent uploads count against
        ``queue_depth`` too, so memory for bodies in flight is bounded by
        ``queue_depth x max_upload_bytes``. Pass ``slot_held=True`` to ``ingest`` inside."""
        self.admit_room()
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    async def ingest(self, data: bytes, content_type: str, meta: Metadata,
                     source: str = "api", client: str | None = None,
                     slot_held: bool = False) -> Accepted:
        """Validate, store durably and queue one image; raises ``Refused``."""
        if slot_held:
            return await self._ingest(data, content_type, meta, source, client)
        with self.slot():
            return await self._ingest(data, content_type, meta, source, client)

    async def _ingest(self, data: bytes, content_type: str, meta: Metadata, source: str,
                      client: str | None) -> Accepted:
        from daemon.uplink.store import NewImage
        from models.errors import EmptyImage, ImageError, ImageTooLarge, TooManyPixels

        assert self.store is not None
        self.admit_type(content_type)
        image_id = hashlib.sha256(data).hexdigest()
        known = await self.db(self.store.get, image_id)
        if known is not None:
            return Accepted(image_id, known["status"], False)
        if len(data) > self.max_upload_bytes:
            raise Refused(413, "too_large",
                          f"{len(data)} bytes is more than the {self.max_upload_bytes}-byte "
                          "limit")
        try:
            image = await self._cpu_run(self._decode, data)
        except (ImageTooLarge, TooManyPixels) as exc:
            raise Refused(413, "too_large", str(exc)) from exc
        except EmptyImage as exc:
            raise Refused(422, "empty", str(exc)) from exc
        except ImageError as exc:
            raise Refused(422, "corrupt", str(exc)) from exc
        m = image.meta
        gps = (m.gps.latitude, m.gps.longitude, m.gps.altitude) if m.gps else None
        new = NewImage(
            id=image_id, content_type=content_type, data=data, source=source,
            client=client, mission=meta.mission, drone=meta.drone,
            captured_at=meta.captured_at or m.captured_at, format=m.format, width=m.width,
            height=m.height, gps=gps, warnings=m.warnings)
        try:
            row, created = await self.db(self.store.add, new)
        except StorageFull as exc:
            raise Refused(507, "storage_full", f"the appliance's data partition is full ({exc})",
                          retry_after=STORAGE_RETRY_S) from exc
        if created:
            if len(self._hot) < self.config.workers:
                self._hot[image_id] = image  # spare the worker a second decode
            self._enqueue(image_id)
        return Accepted(image_id, row["status"], created)

    def _decode(self, data: bytes) -> DecodedImage:
        from models.images import ImageLimits, decode_image

        return decode_image(data, ImageLimits(self.max_upload_bytes, self.config.max_pixels))

    # -- processing ----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            image_id = await self._queue.get()
            waits = False
            try:
                await self._with_model(image_id)
            except StorageFull:  # its result cannot be written yet: it stays pending
                log.warning("data partition full; the image waits", extra={"image": image_id})
                waits = True
                await asyncio.sleep(STORAGE_RETRY_S)
                self._queue.put_nowait(image_id)
            finally:
                if not waits:
                    self._pending.discard(image_id)
                    self._hot.pop(image_id, None)
                    self._depth_changed()

    async def _with_model(self, image_id: str) -> None:
        """Process one image under a lease on the active model, waiting while there is none.

        A model error leaves the lease as an exception, so the health gate counts it; then the
        image is marked failed and the worker goes on (one bad image must not stop it)."""
        assert self.store is not None
        while True:
            try:
                with self.provider.lease() as model:
                    full = await self._try_process(image_id, model)
                if full is not None:
                    raise full  # the worker retries it later
                return
            except NoActiveModel:  # none yet, or swapped out just now: wait for one
                await asyncio.sleep(MODEL_POLL_S)
            except StorageFull:
                raise
            except Exception as exc:
                log.exception("image processing failed", extra={"image": image_id})
                await self.db(self.store.mark_failed, image_id, f"inference failed: {exc}")
                return

    async def _try_process(self, image_id: str, model: ServedModel) -> StorageFull | None:
        """``_process``; a full partition is returned, not raised, so the model's lease does
        not count it as an error of the model (the health gate would roll it back)."""
        try:
            await self._process(image_id, model)
        except StorageFull as exc:
            return exc
        return None

    async def _process(self, image_id: str, model: ServedModel) -> None:
        from models.errors import ImageError
        from models.pipeline import Pipeline, TileOptions

        assert self.store is not None
        row = await self.db(self.store.get, image_id)
        if row is None or row["status"] not in PENDING:
            return
        await self.db(self.store.mark_running, image_id, model.name, model.version,
                       model.backend.name)
        pipeline = Pipeline(model.artifact, model.backend,
                            TileOptions(self.config.tile_overlap, self.config.downscale))
        t0 = time.perf_counter()
        try:
            image = self._hot.pop(image_id, None)
            if image is None:
                data = await self.db(self.store.read_image, row)
                if data is None:
                    raise ImageError("the stored image is missing")
                image = await self._cpu_run(self._decode, data)
            t1 = time.perf_counter()
            tiled = await self._cpu_run(pipeline.tile, image)
            t2 = time.perf_counter()
            probs = await self.batcher.infer(model, tiled.tiles)
            t3 = time.perf_counter()
            result = await self._cpu_run(pipeline.aggregate, image, tiled, probs)
            t4 = time.perf_counter()
        except ImageError as exc:  # the image's fault; a model error reaches the lease (and gate)
            await self.db(self.store.mark_failed, image_id, str(exc))
            return
        result.timings = {"decode_s": round(t1 - t0, 4), "tile_s": round(t2 - t1, 4),
                          "infer_s": round(t3 - t2, 4), "aggregate_s": round(t4 - t3, 4),
                          "queue_s": round(max(0.0, time.time() - row["received_at"]
                                                - (t4 - t0)), 4)}
        self._image_seconds = 0.8 * self._image_seconds + 0.2 * (t4 - t0)
        tiles = [{"box": list(t.box), "probs": t.probs} for t in result.tiles]
        if self.outbox is not None:
            thumb = None
            if self.config.export == "thumbnail":
                thumb = await self._cpu_run(_thumbnail, image)
            # On disk before the image is marked done: a crash between the two repeats the
            # image, and so the event under the same id, rather than losing the event.
            await self.outbox.add(EVENT_KIND,
                                  summary(row, result.labels, result.probs, model, thumb),
                                  event_id=event_id(image_id, model))
        await self.db(self.store.mark_done, image_id, {
            "labels": result.labels, "probs": result.probs, "tiles": tiles,
            "timings": result.timings})

    async def overlay(self, row: dict[str, Any]) -> bytes | None:
        """The heatmap PNG of a done image, or None when its stored image is gone."""
        from models.images import ImageMeta
        from models.pipeline import ImageResult, TileFinding, render_overlay

        assert self.store is not None
        data = await self.db(self.store.read_image, row)
        if data is None:
            return None
        image = await self._cpu_run(self._decode, data)
        findings = [TileFinding(tuple(t["box"]), t["probs"]) for t in row["tiles"]]
        result = ImageResult(ImageMeta(image.meta.format, image.meta.width, image.meta.height),
                             findings, row["probs"], row["labels"])
        return await self._cpu_run(render_overlay, image, result)

    # -- retention and watch folder ------------------------------------------------------

    async def sweep(self) -> list[str]:
        assert self.store is not None
        removed = await self.db(self.store.sweep, self.config.retention_max_bytes,
                                 self.config.retention_max_age_s)
        if removed:
            log.info("retention removed stored images", extra={"count": len(removed)})
        return removed

    async def _retention(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(RETENTION_INTERVAL_S)

    async def _watch(self, watch: Any) -> None:
        while True:
            for path in await asyncio.to_thread(watch.scan):
                await self._ingest_file(watch, path)
            await asyncio.sleep(self.config.watch_interval_s)

    async def _ingest_file(self, watch: Any, path: Path) -> None:
        content_type = EXTENSIONS.get(path.suffix.lower(), "")
        try:
            data = await asyncio.to_thread(watch.read, path, self.max_upload_bytes)
            if data is None:
                raise Refused(413, "too_large",
                              f"more than the {self.max_upload_bytes}-byte limit")
            meta = Metadata(mission=watch.mission_of(path))
            accepted = await self.ingest(data, content_type, meta, source="watch")
        except Refused as exc:
            if exc.status in (429, 507):  # no room in the queue or on disk: not the file's fault
                self.count_drop(exc.code)
                watch.retry_later(path)  # stays in place; picked up again when there is room
                return
            if await asyncio.to_thread(watch.fail, path, exc.reason) is not None:
                self.count_drop(exc.code)  # once, when it fails (not while it is held)
            return
        except OSError as exc:
            log.warning("watch folder: cannot read a file", extra={"path": str(path),
                                                                   "error": str(exc)})
            with contextlib.suppress(OSError):
                await asyncio.to_thread(watch.fail, path, f"unreadable: {exc}")
            return
        await asyncio.to_thread(watch.done, path, accepted.id)


def summary(row: dict[str, Any], labels: list[str], probs: dict[str, float],
            model: ServedModel, thumbnail: str | None = None) -> dict[str, Any]:
    """The compact event the hub gets: never the image, unless export says a thumbnail."""
    gps = None
    if row.get("latitude") is not None:
        gps = {"latitude": row["latitude"], "longitude": row["longitude"],
               "altitude": row["altitude"]}
    data: dict[str, Any] = {
        "image": row["id"], "mission": row["mission"], "drone": row["drone"],
        "captured_at": row["captured_at"], "labels": labels,
        "max_probs": {k: round(v, 4) for k, v in probs.items()}, "gps": gps,
        "model": {"name": model.name, "version": model.version},
    }
    if thumbnail is not None:
        data["thumbnail_jpeg_b64"] = thumbnail
    return data


def _thumbnail(image: DecodedImage) -> str:
    import base64
    import io

    from PIL import Image

    im = Image.fromarray(image.pixels)
    im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=70)
    return base64.b64encode(out.getvalue()).decode()
