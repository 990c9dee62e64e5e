"""The model artifact: ``model.onnx`` + ``weights.safetensors`` + ``card.json``, as a directory
or a tar of one.

``write_artifact`` produces one from a model; ``load_artifact`` validates all of it (file
hashes, card schema, card against graph and weights) and raises ``ArtifactError`` naming the
first thing wrong. ``Artifact.smoke_test`` compares a backend's output on the card's golden
input with the expected output recorded at export time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from appliance.fsutil import atomic_write, fsync_dir, sha256_file
from models.cache import default_cache_dir
from models.config import CODEBRIM_LABELS, ViTConfig
from models.decide import PER_TILE, Decision
from models.errors import ArtifactError, ModelError
from models.preprocess import Preprocessing
from models.signature import GraphSignature

if TYPE_CHECKING:
    from models.vit import VisionTransformer

# torch and onnx are imported where a model is built, exported or checked, not at module level:
# they cost seconds of start-up, and serving a verified artifact on ONNX Runtime or OpenVINO
# needs neither (see ``_check_graph_and_weights``).

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
FORMAT_VERSION = 1
#: The golden input is a tiny uint8 pattern per image, nearest-upscaled to the input size:
#: a compact card that still exercises preprocessing and the whole graph.
GOLDEN_PATTERN = 8
GOLDEN_IMAGES = 2
#: Admits bf16 autocast and TensorRT FP16 against the fp32 reference, on probabilities in 0..1.
GOLDEN_ATOL = 0.05
MAX_TAR_BYTES = 2 * 1024**3

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CARD_KEYS = {
    "format",
    "name",
    "version",
    "config",
    "labels",
    "preprocessing",
    "thresholds",
    "metrics",
    "parent",
    "golden",
    "files",
}
#: Keys a card may omit: a card written before ``decision`` existed is calibrated per tile.
_OPTIONAL_KEYS = {"decision"}


@dataclass(frozen=True)
class Golden:
    """Smoke-test data: uint8 patterns (hex, ``GOLDEN_PATTERN``² x 3 each) and expected probs."""

    patterns: tuple[str, ...]
    expected: tuple[tuple[float, ...], ...]
    atol: float = GOLDEN_ATOL

    def images(self, input_size: int) -> np.ndarray:
        """(N, input_size, input_size, 3) uint8 images, each pattern pixel repeated."""
        if input_size % GOLDEN_PATTERN:
            raise ArtifactError(f"input size {input_size} is not a multiple of {GOLDEN_PATTERN}")
        k = input_size // GOLDEN_PATTERN
        small = np.stack(
            [
                np.frombuffer(bytes.fromhex(p), dtype=np.uint8).reshape(
                    GOLDEN_PATTERN, GOLDEN_PATTERN, 3
                )
                for p in self.patterns
            ]
        )
        return small.repeat(k, axis=1).repeat(k, axis=2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "patterns": list(self.patterns),
            "expected": [list(e) for e in self.expected],
            "atol": self.atol,
        }


@dataclass(frozen=True)
class ModelCard:
    """Everything about a model except its bytes; ``files`` maps file name to sha256."""

    name: str
    version: str
    config: ViTConfig
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    thresholds: dict[str, float]
    golden: Golden
    files: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    parent: str | None = None
    #: Which decision ``thresholds`` are calibrated for (``models.decide.Decision``).
    decision: Decision = PER_TILE

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "config": self.config.to_dict(),
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "thresholds": self.thresholds,
            "decision": self.decision.to_dict(),
            "metrics": self.metrics,
            "parent": self.parent,
            "golden": self.golden.to_dict(),
            "files": self.files,
        }

    @property
    def ref(self) -> str:
        """``name@version``: how a child model names its parent."""
        return f"{self.name}@{self.version}"


@dataclass
class Artifact:
    """A validated artifact on disk. For a tar, ``root`` is a private extraction directory that
    lives as long as this object."""

    root: Path
    card: ModelCard
    signature: GraphSignature
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FILE

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS_FILE

    def build_model(self) -> VisionTransformer:
        """The PyTorch model with this artifact's weights, in eval mode."""
        from models.checkpoint import load_weights
        from models.vit import VisionTransformer

        model = VisionTransformer(self.card.config)
        load_weights(model, self.weights_path)
        return model.eval()

    def golden_batch(self) -> np.ndarray:
        """The golden input, preprocessed: what a backend gets in a smoke test."""
        pre = self.card.preprocessing
        return pre.normalize(self.card.golden.images(pre.input_size))

    def check_golden(self, probs: np.ndarray) -> float:
        """Raise ``ArtifactError`` unless ``probs`` match the expected output; returns the max
        absolute difference."""
        expected = np.asarray(self.card.golden.expected, dtype=np.float32)
        if probs.shape != expected.shape:
            raise ArtifactError(f"golden output shape {probs.shape} != expected {expected.shape}")
        diff = float(np.max(np.abs(probs.astype(np.float32) - expected)))
        if not diff <= self.card.golden.atol:
            raise ArtifactError(
                f"golden output differs by {diff:.4f} (tolerance {self.card.golden.atol})"
            )
        return diff


def write_artifact(
    model: VisionTransformer,
    out_dir: Path,
    *,
    name: str,
    version: str,
    labels: Sequence[str] = CODEBRIM_LABELS,
    thresholds: dict[str, float] | None = None,
    preprocessing: Preprocessing | None = None,
    metrics: dict[str, float] | None = None,
    parent: str | None = None,
    golden_seed: int = 0,
    decision: Decision = PER_TILE,
) -> Artifact:
    """Export ``model`` into a new directory ``out_dir`` (refused if it exists and is not
    empty), atomically: the files are written beside it and the directory renamed into place.

    ``thresholds`` default to 0.5 per label; ``preprocessing`` defaults to ImageNet statistics
    at the model's input size; ``decision`` says what the thresholds were calibrated for.
    """
    cfg = model.cfg
    labels = tuple(labels)
    thresholds = dict(thresholds) if thresholds is not None else dict.fromkeys(labels, 0.5)
    preprocessing = preprocessing or Preprocessing(cfg.img_size)
    _check_description(name, version, cfg, labels, thresholds, preprocessing)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ArtifactError(f"{out_dir} already exists and is not an empty directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    from models.checkpoint import save_weights
    from models.export import export_onnx

    try:
        export_onnx(model, work / ONNX_FILE)
        save_weights(model, work / WEIGHTS_FILE)
        golden = _make_golden(model, preprocessing, golden_seed)
        card = ModelCard(
            name=name,
            version=version,
            config=cfg,
            labels=labels,
            preprocessing=preprocessing,
            thresholds=thresholds,
            golden=golden,
            files={f: sha256_file(work / f) for f in (ONNX_FILE, WEIGHTS_FILE)},
            metrics=dict(metrics or {}),
            parent=parent,
            decision=decision,
        )
        _validate_card(card)
        (work / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        for f in (ONNX_FILE, WEIGHTS_FILE, CARD_FILE):
            with (work / f).open("rb") as fh:
                os.fsync(fh.fileno())
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load_artifact(out_dir)


def _make_golden(model: VisionTransformer, pre: Preprocessing, seed: int) -> Golden:
    import torch

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (GOLDEN_IMAGES, GOLDEN_PATTERN, GOLDEN_PATTERN, 3), dtype=np.uint8)
    golden = Golden(tuple(p.tobytes().hex() for p in small), ())
    batch = torch.from_numpy(pre.normalize(golden.images(pre.input_size)))
    with torch.inference_mode():
        probs = torch.sigmoid(model.eval()(batch)).numpy()
    return Golden(golden.patterns, tuple(tuple(round(float(v), 6) for v in row) for row in probs))


def load_artifact(path: Path) -> Artifact:
    """Open and validate an artifact directory or tar (``.tar``, ``.tar.gz``)."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        tmp = tempfile.TemporaryDirectory(prefix="spoke-artifact-")
        try:
            _extract(path, Path(tmp.name))
            artifact = _load_dir(Path(tmp.name))
        except BaseException:
            tmp.cleanup()
            raise
        artifact._tmp = tmp
        return artifact
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an artifact directory or tar")
    return _load_dir(path)


def pack_artifact(src_dir: Path, out: BinaryIO) -> None:
    """The artifact's three files at the top level of an uncompressed tar: deterministic
    (same files, same bytes, so a signed target's hash is reproducible), and its length
    bounds what extracting it writes. Delivery and promotion both ship artifacts this way."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in (CARD_FILE, ONNX_FILE, WEIGHTS_FILE):
            path = Path(src_dir) / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with path.open("rb") as f:
                tar.addfile(info, f)


def _extract(tar_path: Path, dest: Path) -> None:
    """Only the three known regular files, with a size bound: nothing else leaves the tar."""
    wanted = {CARD_FILE, ONNX_FILE, WEIGHTS_FILE}
    try:
        with tarfile.open(tar_path) as tar:
            members = [m for m in tar.getmembers() if m.name.lstrip("./") in wanted]
            if any(not m.isfile() for m in members):
                raise ArtifactError(f"{tar_path}: artifact entries must be regular files")
            if sum(m.size for m in members) > MAX_TAR_BYTES:
                raise ArtifactError(f"{tar_path}: more than {MAX_TAR_BYTES} bytes of files")
            for m in members:
                src = tar.extractfile(m)
                if src is None:
                    raise ArtifactError(f"{tar_path}: cannot read {m.name}")
                with src, (dest / m.name.lstrip("./")).open("wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"{tar_path}: unreadable tar: {exc}") from exc


def _load_dir(root: Path) -> Artifact:
    raw = _card_bytes(root)
    card = _parse_card(root, raw)
    for fname in (ONNX_FILE, WEIGHTS_FILE):
        if fname not in card.files:
            raise ArtifactError(f"{root / CARD_FILE}: no sha256 for {fname}")
    for fname, digest in sorted(card.files.items()):
        fpath = root / fname
        if not fpath.is_file():
            raise ArtifactError(f"{root}: missing file {fname}")
        actual = sha256_file(fpath)
        if actual != digest:
            raise ArtifactError(f"{fpath}: sha256 {actual} does not match the card's {digest}")
    signature = _check_graph_and_weights(root, card, hashlib.sha256(raw).hexdigest())
    return Artifact(root, card, signature)


def _check_graph_and_weights(root: Path, card: ModelCard, card_sha256: str) -> GraphSignature:
    """Run the ONNX checker and build the model from its weights, or reuse the verdict of an
    earlier load of the same bytes.

    Both checks cost seconds (they import onnx and torch). Their verdict depends only on the
    files, whose hashes the card holds and ``_load_dir`` has just verified, so it is kept in
    the engine cache under the card's sha256: a second ``spoke infer`` on the same model
    starts without either library. The cache is trusted like the int8 graphs beside it; an
    unwritable cache only means checking every time. ``card_sha256``: the hash of the card
    bytes that were parsed (not read again: they are what the verdict is about)."""
    record = default_cache_dir() / "verified" / f"{card_sha256}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return GraphSignature.from_dict(json.loads(record.read_text()))
    from models.export import check_onnx

    try:
        signature = check_onnx(root / ONNX_FILE)
    except ModelError as exc:
        raise ArtifactError(str(exc)) from exc
    _check_graph(card, signature)
    try:
        Artifact(root, card, signature).build_model()
    except ModelError as exc:
        raise ArtifactError(
            f"{root / WEIGHTS_FILE} does not match the card's config: {exc}"
        ) from exc
    with contextlib.suppress(OSError):
        atomic_write(record, json.dumps(signature.to_dict()).encode())
    return signature


def read_card(root: Path) -> ModelCard:
    """Parse and validate ``card.json`` alone (no file hashes checked)."""
    return _parse_card(root, _card_bytes(root))


def _card_bytes(root: Path) -> bytes:
    card_path = root / CARD_FILE
    if not card_path.is_file():
        raise ArtifactError(f"{root}: missing file {CARD_FILE}")
    try:
        return card_path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{card_path}: not valid JSON: {exc}") from exc


def _parse_card(root: Path, raw: bytes) -> ModelCard:
    card_path = root / CARD_FILE
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{card_path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{card_path}: must be a JSON object")
    missing = _CARD_KEYS - set(data)
    unknown = set(data) - _CARD_KEYS - _OPTIONAL_KEYS
    if missing or unknown:
        raise ArtifactError(
            f"{card_path}: missing keys {sorted(missing) or 'none'}, "
            f"unknown keys {sorted(unknown) or 'none'}"
        )
    if data["format"] != FORMAT_VERSION:
        raise ArtifactError(f"{card_path}: format {data['format']!r} is not {FORMAT_VERSION}")
    try:
        golden = data["golden"]
        card = ModelCard(
            name=str(data["name"]),
            version=str(data["version"]),
            config=ViTConfig.from_dict(data["config"]),
            labels=tuple(data["labels"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            thresholds={str(k): float(v) for k, v in data["thresholds"].items()},
            golden=Golden(
                tuple(golden["patterns"]),
                tuple(tuple(float(v) for v in row) for row in golden["expected"]),
                float(golden["atol"]),
            ),
            files={str(k): str(v) for k, v in data["files"].items()},
            metrics={str(k): float(v) for k, v in data["metrics"].items()},
            parent=None if data["parent"] is None else str(data["parent"]),
            decision=Decision.from_dict(data["decision"]) if "decision" in data else PER_TILE,
        )
    except ModelError as exc:
        raise ArtifactError(f"{card_path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{card_path}: malformed field: {exc!r}") from exc
    try:
        _validate_card(card)
    except ArtifactError as exc:
        raise ArtifactError(f"{card_path}: {exc}") from exc
    return card


def _check_description(
    name: str,
    version: str,
    cfg: ViTConfig,
    labels: tuple[str, ...],
    thresholds: dict[str, float],
    preprocessing: Preprocessing,
) -> None:
    """The card fields a person chooses; checked before an export spends any time."""
    if not _NAME.match(name):
        raise ArtifactError(f"invalid model name {name!r}")
    if not _SEMVER.match(version):
        raise ArtifactError(f"version {version!r} is not a semantic version")
    if len(labels) != cfg.num_classes:
        raise ArtifactError(f"{len(labels)} labels for a {cfg.num_classes}-class config")
    if len(set(labels)) != len(labels) or not all(labels):
        raise ArtifactError("labels must be unique and non-empty")
    if set(thresholds) != set(labels):
        raise ArtifactError("thresholds must name exactly the labels")
    if not all(0.0 <= t <= 1.0 for t in thresholds.values()):
        raise ArtifactError("thresholds must be between 0 and 1")
    if preprocessing.input_size != cfg.img_size:
        raise ArtifactError(
            f"preprocessing input_size {preprocessing.input_size} != config img_size {cfg.img_size}"
        )


def _validate_card(card: ModelCard) -> None:
    _check_description(
        card.name, card.version, card.config, card.labels, card.thresholds, card.preprocessing
    )
    unknown = sorted(set(card.decision.mean) - set(card.labels))
    if unknown:
        raise ArtifactError(f"the decision averages labels the card does not have: {unknown}")
    if set(card.files) - {ONNX_FILE, WEIGHTS_FILE}:
        raise ArtifactError(f"unexpected files listed: {sorted(set(card.files))}")
    g = card.golden
    if len(g.patterns) != len(g.expected) or not g.patterns or g.atol <= 0:
        raise ArtifactError("golden data needs one expected row per pattern and atol > 0")
    if any(len(p) != GOLDEN_PATTERN * GOLDEN_PATTERN * 3 * 2 for p in g.patterns) or any(
        len(row) != card.config.num_classes for row in g.expected
    ):
        raise ArtifactError("golden patterns or expected rows have the wrong size")


def _check_graph(card: ModelCard, sig: GraphSignature) -> None:
    cfg = card.config
    want_in = (cfg.in_chans, cfg.img_size, cfg.img_size)
    if len(sig.input_shape) != 4 or sig.input_shape[1:] != want_in:
        raise ArtifactError(
            f"card/graph mismatch: graph input {sig.input_shape}, card expects "
            f"(batch, {', '.join(map(str, want_in))})"
        )
    if len(sig.output_shape) != 2 or sig.output_shape[1] != len(card.labels):
        raise ArtifactError(
            f"card/graph mismatch: graph output {sig.output_shape}, card has "
            f"{len(card.labels)} labels"
        )
