"""Image bytes to findings: decode -> tile -> normalise -> batched inference -> aggregate.

Each step is callable on its own so a server can pool tiles of several requests into one
``Backend.infer`` call::

    image = decode_image(data, limits)                          # bounded decode + EXIF
    tiled = pipeline.tile(image)                                # uint8 tiles + original boxes
    probs = backend.infer(card.preprocessing.normalize(tiled.tiles))   # any batch size
    result = pipeline.aggregate(image, tiled, probs)            # per-tile and per-image labels

``Pipeline.run`` does all of it for one image and records how long each stage took;
``Pipeline.run_many`` does it for a sequence, decoding and tiling the next image on a second
thread while the backend infers the current one.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from models.artifact import Artifact
from models.backends.base import Backend
from models.decide import decide, image_probs
from models.errors import ImageError, ModelError
from models.images import DEFAULT_LIMITS, DecodedImage, ImageLimits, ImageMeta, decode_image
from models.preprocess import Preprocessing
from models.tiling import TiledImage, tile_image

#: Labels that mean "nothing found": left out of the heatmap.
BACKGROUND_LABELS = frozenset({"background"})
OVERLAY_MAX_SIDE = 1600
#: ``Pipeline.run`` normalises and infers this many backend batches at a time.
CHUNK_BATCHES = 4
#: ``run_many`` decodes at most this many images ahead of the one being inferred.
LOOKAHEAD = 1

T = TypeVar("T")


@dataclass(frozen=True)
class TileOptions:
    """Tile overlap in model-input pixels (``None``: a seventh of a tile, 32 px at 224), and an
    integer downscale applied before tiling."""

    overlap: int | None = None
    downscale: int = 1


def tile_overlap(size: int, options: TileOptions) -> int:
    return size // 7 if options.overlap is None else options.overlap


def serving_tiles(pixels: np.ndarray, pre: Preprocessing,
                  options: TileOptions = TileOptions()) -> TiledImage:
    """The tiles the pipeline infers for ``pixels`` (an axis shorter than a tile padded with
    the normalisation mean): fine-tuning trains and calibrates on these same tiles, so a
    labeled photo larger than the model's input is learnt at the scale it is served at."""
    size = pre.input_size
    pad = (round(pre.mean[0] * 255), round(pre.mean[1] * 255), round(pre.mean[2] * 255))
    return tile_image(pixels, size, tile_overlap(size, options), options.downscale, pad)


@dataclass(frozen=True)
class TileFinding:
    box: tuple[int, int, int, int]
    probs: dict[str, float]


@dataclass(frozen=True)
class Prepared:
    """A decoded, tiled image waiting for inference, and the seconds each step took."""

    image: DecodedImage
    tiled: TiledImage
    decode_s: float
    tile_s: float


@dataclass
class ImageResult:
    """Per-tile probabilities, per-image maxima and the labels at or over their thresholds."""

    meta: ImageMeta
    tiles: list[TileFinding]
    probs: dict[str, float]
    labels: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.meta.to_dict(),
            "labels": self.labels,
            "probs": self.probs,
            "tiles": [{"box": list(t.box), "probs": t.probs} for t in self.tiles],
            "timings": self.timings,
        }


class Pipeline:
    """One artifact, one backend, one set of tiling options and image limits."""

    def __init__(
        self,
        artifact: Artifact,
        backend: Backend,
        options: TileOptions = TileOptions(),
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        self.card = artifact.card
        self.backend = backend
        self.options = options
        self.limits = limits
        self.overlap = tile_overlap(self.card.preprocessing.input_size, options)
        #: Wall-clock time (``time.time()``) the first batch of tiles came back: start-up metric.
        self.first_inferred_at: float | None = None

    def decode(self, data: bytes) -> DecodedImage:
        """Bounded decode (see ``models.images.decode_image``) with this pipeline's limits."""
        return decode_image(data, self.limits)

    def tile(self, image: DecodedImage) -> TiledImage:
        """Model-sized uint8 tiles with their boxes in the original image's pixels."""
        return serving_tiles(image.pixels, self.card.preprocessing, self.options)

    def aggregate(self, image: DecodedImage, tiled: TiledImage, probs: np.ndarray) -> ImageResult:
        """Per-image probability = max over tiles (or, for the labels the card's decision
        averages, the mean of their logits); a defect is reported at or over its threshold,
        background only where no defect is (``models.decide``)."""
        labels = self.card.labels
        if probs.shape != (len(tiled.boxes), len(labels)):
            raise ModelError(
                f"probabilities {probs.shape} do not match "
                f"{len(tiled.boxes)} tiles x {len(labels)} labels"
            )
        rounded = np.round(probs.astype(np.float64), 5).tolist()
        findings = [
            TileFinding((x0, y0, x1, y1), dict(zip(labels, row, strict=True)))
            for (x0, y0, x1, y1), row in zip(tiled.boxes.tolist(), rounded, strict=True)
        ]
        combined = image_probs(probs, np.zeros(len(probs), dtype=np.int64), 1, labels,
                               self.card.decision)[0]
        peak = dict(zip(labels, np.round(combined.astype(np.float64), 5).tolist(), strict=True))
        found = decide([peak[lab] for lab in labels], labels, self.card.thresholds)
        return ImageResult(image.meta, findings, peak, found)

    def prepare(self, data: bytes) -> Prepared:
        """Decode and tile: everything before inference, safe to run on another thread."""
        t0 = time.perf_counter()
        image = self.decode(data)
        t1 = time.perf_counter()
        tiled = self.tile(image)
        return Prepared(image, tiled, t1 - t0, time.perf_counter() - t1)

    def infer_prepared(self, prepared: Prepared) -> ImageResult:
        """Normalise and infer ``prepared``'s tiles a chunk at a time (float32 copies of a
        100-megapixel image's tiles never exist all at once), then aggregate."""
        tiles = prepared.tiled.tiles
        normalizing = inferring = 0.0
        chunk = self.backend.batch_size * CHUNK_BATCHES
        parts = []
        for start in range(0, len(tiles), chunk):
            t0 = time.perf_counter()
            batch = self.card.preprocessing.normalize(tiles[start : start + chunk])
            t1 = time.perf_counter()
            parts.append(self.backend.infer(batch))
            if self.first_inferred_at is None:
                self.first_inferred_at = time.time()
            normalizing += t1 - t0
            inferring += time.perf_counter() - t1
        t2 = time.perf_counter()
        result = self.aggregate(prepared.image, prepared.tiled, np.concatenate(parts))
        result.timings = {
            "decode": prepared.decode_s,
            "tile": prepared.tile_s + normalizing,
            "infer": inferring,
            "aggregate": time.perf_counter() - t2,
        }
        return result

    def run(self, data: bytes) -> ImageResult:
        """All steps for one image; ``timings`` holds seconds per stage."""
        return self.infer_prepared(self.prepare(data))

    def run_many(
        self, items: Iterable[T], read: Callable[[T], bytes]
    ) -> Iterator[tuple[T, Prepared | None, ImageResult | Exception]]:
        """Results in order for ``items``, each read by ``read``: reading, decoding and tiling
        run on a worker thread up to ``LOOKAHEAD`` images ahead, so the backend does not wait
        for a JPEG decode while work is queued. An item that cannot be read or decoded yields
        its ``ImageError`` or ``OSError`` instead of a result; the others go on."""
        source = iter(items)
        with ThreadPoolExecutor(1, thread_name_prefix="spoke-prepare") as pool:
            queued: deque[tuple[T, Future[Prepared]]] = deque()

            def submit() -> None:
                for item in source:
                    queued.append((item, pool.submit(self._read_and_prepare, read, item)))
                    return

            for _ in range(LOOKAHEAD):
                submit()
            while queued:
                item, future = queued.popleft()
                try:
                    prepared = future.result()
                except (ImageError, OSError) as exc:
                    submit()
                    yield item, None, exc
                    continue
                submit()
                yield item, prepared, self.infer_prepared(prepared)

    def _read_and_prepare(self, read: Callable[[T], bytes], item: T) -> Prepared:
        return self.prepare(read(item))


def render_overlay(
    image: DecodedImage, result: ImageResult, max_side: int = OVERLAY_MAX_SIDE
) -> bytes:
    """A PNG of the image (shrunk to ``max_side``) under a heatmap of the highest defect
    probability covering each pixel: transparent at 0, opaque red-to-yellow towards 1."""
    meta = result.meta
    scale = min(1.0, max_side / max(meta.width, meta.height))
    size = (max(1, round(meta.width * scale)), max(1, round(meta.height * scale)))
    base = np.asarray(
        Image.fromarray(image.pixels).resize(size, Image.Resampling.BILINEAR), dtype=np.float32
    )
    heat = np.zeros((size[1], size[0]), dtype=np.float32)
    defects = [lab for lab in result.probs if lab not in BACKGROUND_LABELS]
    for finding in result.tiles:
        p = max((finding.probs[lab] for lab in defects), default=0.0)
        x0, y0, x1, y1 = (round(v * scale) for v in finding.box)
        np.maximum(heat[y0:y1, x0:x1], p, out=heat[y0:y1, x0:x1])
    color = np.stack([np.full_like(heat, 255.0), 255.0 * heat, np.zeros_like(heat)], axis=-1)
    alpha = (0.65 * heat)[..., None]
    blended = (base * (1.0 - alpha) + color * alpha).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(blended).save(out, format="PNG")
    return out.getvalue()
