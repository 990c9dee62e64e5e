"""What the gate judges a fine-tune on: held-out decisions, each a label's maximum over tiles.

A parent whose card decides per tile is judged on its held-out samples as served (a sample's
tiles, ``models.finetune.served``). A parent whose card decides per frame
(``models.decide.Decision``: the uplink's maximum over a frame's tiles, cut after a downscale)
must be judged on frames: judged on tiles, the gate promoted a candidate that was better on
tiles and worse on the frames the fleet reports (docs/FOUNDATION-MODEL.md, session 5). So the
labeled samples larger than one tile at that downscale are taken as whole frames of the site,
cut as the uplink cuts them; half of them calibrate the candidate's thresholds for that
decision, the other half are the gate's held-out set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from appliance.errors import DataError
from appliance.finetune import Skipped
from models.data.labels import multi_hot
from models.decide import BACKGROUND, Decision
from models.finetune.served import Tiles
from models.finetune.split import TooFewSamples, stratified_split
from models.pipeline import TileOptions, serving_tiles
from models.preprocess import Preprocessing
from models.training.metrics import calibrate_thresholds

#: At most this many labeled frames are used (the first ones); each is tens of tiles.
MAX_FRAMES = 64
#: The share of the labeled frames the gate judges on; the rest calibrate the thresholds.
GATE_SHARE = 0.5


@dataclass(frozen=True)
class HeldOut:
    """Labeled decisions: the tiles each is the maximum over, and (N, L) targets."""

    tiles: Tiles
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, idx: np.ndarray) -> HeldOut:
        """The decisions ``idx``, in that order."""
        return HeldOut(self.tiles.select(idx), self.targets[idx])


def target_row(path: str, labels: Sequence[str], names: tuple[str, ...]) -> np.ndarray:
    """The multi-hot row of a sample's ``labels`` over the job's label ``names``."""
    for name in labels:
        if name not in names:
            raise DataError(f"sample {path}: label {name!r} is not in the job's label set")
    return np.asarray(multi_hot(set(labels), names), dtype=np.float32)


def needs_frames(decision: Decision) -> DataError:
    """The refusal of a job whose parent decides per frame but has no labeled frame."""
    return DataError(
        f"the current model decides {decision}: label whole frames of the site too "
        "(at least 8), so the candidate is calibrated and judged on frames")


def spans_tiles(width: int, height: int, pre: Preprocessing, decision: Decision) -> bool:
    """Whether the uplink cuts an image of this size into more than one tile."""
    return max(width, height) > pre.input_size * decision.downscale


def is_frame(path: str, pre: Preprocessing, decision: Decision) -> bool:
    """Whether the uplink would cut the image at ``path`` into more than one tile (an
    unreadable file is not: the sample loader skips it with the decoder's reason)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError):
        return False
    return spans_tiles(width, height, pre, decision)


def load_frames(samples: Sequence[tuple[str, tuple[str, ...]]], names: tuple[str, ...],
                pre: Preprocessing, decision: Decision,
                load_pixels: Callable[[str], np.ndarray]) -> tuple[HeldOut, list[Skipped]]:
    """The first ``MAX_FRAMES`` labeled frames, cut as the uplink cuts them; unreadable ones
    are skipped with the decoder's reason."""
    options = TileOptions(downscale=decision.downscale)
    tiles: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    skipped: list[Skipped] = []
    for path, labels in samples[:MAX_FRAMES]:
        try:
            tiles.append(serving_tiles(load_pixels(path), pre, options).tiles)
        except (OSError, DataError) as exc:
            skipped.append(Skipped(path=path, reason=str(exc)))
            continue
        targets.append(target_row(path, labels, names))
    if not targets:
        raise TooFewSamples(f"no readable labeled frames ({len(skipped)} skipped as unreadable)")
    return HeldOut(Tiles.of(tiles), np.stack(targets)), skipped


def frame_split(targets: np.ndarray, names: Sequence[str], seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, gate) indices of labeled frames with (N, L) ``targets``, stratified like
    the samples' split."""
    try:
        return stratified_split(targets, tuple(names), GATE_SHARE, seed)
    except TooFewSamples as exc:
        raise TooFewSamples(f"labeled frames: {exc}") from exc


def split_frames(frames: HeldOut, names: tuple[str, ...], seed: int
                 ) -> tuple[HeldOut, HeldOut]:
    """(calibration, gate) halves of the labeled frames (``frame_split``)."""
    cal, gate = frame_split(frames.targets, names, seed)
    return frames.select(cal), frames.select(gate)


@dataclass(frozen=True)
class FramePlan:
    """What a job for a parent that decides per frame will do with the samples, known before
    it is queued: the tiles train; of the labeled frames (the first ``MAX_FRAMES``), some
    calibrate the candidate's thresholds (``background`` of them labeled background) and the
    rest are the gate's held-out set."""

    tiles: int
    frames: int
    calibration: int
    judged: int
    background: int


def plan_frames(sizes: Sequence[tuple[int, int]], targets: np.ndarray, names: Sequence[str],
                pre: Preprocessing, decision: Decision, seed: int) -> FramePlan:
    """The ``FramePlan`` of samples of (width, height) ``sizes`` and (N, L) ``targets``, split
    as ``prepare_job`` splits them; raises ``DataError`` without labeled frames and
    ``TooFewSamples`` when they cannot be split."""
    frames = [i for i, (w, h) in enumerate(sizes) if spans_tiles(w, h, pre, decision)]
    if not frames:
        raise needs_frames(decision)
    used = frames[:MAX_FRAMES]
    cal, judged = frame_split(targets[used], names, seed)
    background = 0
    if BACKGROUND in names:
        background = int((targets[used][cal, list(names).index(BACKGROUND)] >= 0.5).sum())
    return FramePlan(len(sizes) - len(frames), len(used), len(cal), len(judged), background)


def frame_calibrated(probs: np.ndarray, targets: np.ndarray, names: tuple[str, ...],
                     fallback: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Per label, the threshold with the best F1 on the calibration frames' (N, L) maxima
    ``probs``, where those frames hold both the label and its absence; any other label keeps
    its ``fallback`` (the parent's) threshold. Returns the thresholds and the labels
    calibrated."""
    best = calibrate_thresholds(probs, targets, names)
    positives = (targets >= 0.5).sum(axis=0)
    done = [n for j, n in enumerate(names) if 0 < positives[j] < len(targets)]
    return {n: best[n] if n in done else fallback[n] for n in names}, done
