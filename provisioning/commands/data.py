"""``spoke-hub data generate``: write a labeled set of synthetic concrete-defect images.

The format (``labels.csv``, ``boxes.json``) is documented in ``models.data.dataset``; it is
what ``spoke samples import DIR`` reads.
"""

import argparse
import re
import time
from pathlib import Path

from appliance.errors import DataError
from models.data import Domain, render_frame, render_tile, write_frames, write_tiles


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic CODEBRIM-style training data")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    g = dsub.add_parser("generate", help="write generated tiles or drone frames with labels")
    g.add_argument("--domain", type=int, required=True, help="site seed: sets the appearance")
    what = g.add_mutually_exclusive_group(required=True)
    what.add_argument("--tiles", type=int, metavar="N", help="N multi-label PNG tiles")
    what.add_argument("--frames", type=int, metavar="N", help="N JPEG drone frames with boxes")
    g.add_argument("--size", type=int, default=224, help="tile side in pixels (default 224)")
    g.add_argument(
        "--frame-size", default="4000x3000", help="frame WIDTHxHEIGHT (default 4000x3000)"
    )
    g.add_argument("--first", type=int, default=0, metavar="I",
                   help="frames only: start at the site's frame I (default 0), e.g. a survey "
                        "that does not repeat a flight's frames 0..I-1")
    g.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    g.set_defaults(handler=generate)

    b = dsub.add_parser("bench", help="measure generation speed (tiles/s, frames/s)")
    b.add_argument("--sizes", default="64,112,224", help="tile sizes to measure")
    b.add_argument("--count", type=int, default=200, help="tiles per size")
    b.add_argument("--frames", type=int, default=2, help="4000x3000 frames to time (0: none)")
    b.set_defaults(handler=bench)


def _frame_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or min(int(m[1]), int(m[2])) < 64 or int(m[1]) * int(m[2]) > 64_000_000:
        raise DataError(f"--frame-size {text!r}: expected WIDTHxHEIGHT, 64 to 64 megapixels")
    return int(m[1]), int(m[2])


def generate(args: argparse.Namespace) -> int:
    count = args.tiles if args.tiles is not None else args.frames
    if count < 1:
        raise DataError("the image count must be at least 1")
    if args.first < 0 or (args.first and args.tiles is not None):
        raise DataError(f"--first {args.first}: a frame index (0 or more), with --frames only")
    start = time.perf_counter()
    if args.tiles is not None:
        if not 16 <= args.size <= 4096:
            raise DataError(f"--size {args.size}: must be between 16 and 4096 pixels")
        rows = write_tiles(args.out, args.domain, count, args.size, progress=True)
    else:
        width, height = _frame_size(args.frame_size)
        rows = write_frames(args.out, args.domain, count, width, height, progress=True,
                            first=args.first)
    elapsed = time.perf_counter() - start
    defects = sum(1 for r in rows if "background" not in r.labels)
    print(
        f"wrote {len(rows)} images ({defects} with defects) of domain {args.domain} "
        f"to {args.out} in {elapsed:.1f} s ({len(rows) / elapsed:.1f} images/s)"
    )
    return 0


def bench(args: argparse.Namespace) -> int:
    """Single-process generation speed, in memory (no PNG/JPEG encoding)."""
    domain = Domain.from_seed(1)
    for size in (int(v) for v in args.sizes.split(",")):
        start = time.perf_counter()
        for i in range(args.count):
            render_tile(domain, i, size)
        rate = args.count / (time.perf_counter() - start)
        print(f"tiles {size:>4}px: {rate:7.1f} tiles/s")
    if args.frames > 0:
        start = time.perf_counter()
        for i in range(args.frames):
            render_frame(domain, i)
        print(f"frames 4000x3000: {(time.perf_counter() - start) / args.frames:.2f} s/frame")
    return 0
