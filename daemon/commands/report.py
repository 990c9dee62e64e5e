"""``spoke report MISSION --state-dir DIR --out report.html [--pdf] [--ground-truth FRAMES]``:
the inspector's mission report as one self-contained HTML file (``daemon/web/report.py``), and
a PDF beside it with ``--pdf`` when headless Chromium is installed. ``--ground-truth`` (a folder
of generated frames with their ``boxes.json``: a test flight over known defects) adds, and
prints, the detections' precision and recall against the truth (``models.groundtruth``).

It reads the results store read-only, so it works while the daemon runs and after it stopped.
"""

import argparse
import dataclasses
from pathlib import Path

from appliance.cli import print_json
from daemon.commands.run import add_state_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the mission report: one self-contained HTML file (or PDF)")
    add_state_dir(p)
    p.add_argument("mission", metavar="MISSION", help="the mission (flight) id")
    p.add_argument("--out", type=Path, default=None,
                   help="HTML file to write (default report-MISSION.html)")
    p.add_argument("--pdf", action="store_true",
                   help="also print it to a PDF beside the HTML (needs headless Chromium)")
    p.add_argument("--ground-truth", type=Path, metavar="FRAMES",
                   help="the frames' folder with boxes.json: compare detections with the truth")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=run)


def _device_id(state_dir: Path) -> str | None:
    from daemon.state import StateDir, load_identity

    ident = load_identity(StateDir(state_dir))
    return ident.device_id if ident is not None else None


def run(args: argparse.Namespace) -> int:
    from appliance.errors import ConfigError
    from appliance.fsutil import atomic_write
    from daemon.web.report import build_report, html_to_pdf
    from daemon.web.results import Results

    state = args.state_dir.resolve()
    results = Results(state / "uplink")
    if not results.exists():
        raise ConfigError(f"no uplink results in {state} (is --state-dir right?)")
    rows = results.mission(args.mission)
    if not rows:
        raise ConfigError(f"no images for mission {args.mission!r} in {state}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.mission)
    out: Path = args.out or Path(f"report-{safe}.html")
    truth = None
    if args.ground_truth is not None:
        from models.groundtruth import compare_frames, truth_by_content

        truth = compare_frames({r["id"]: r.get("labels") or [] for r in rows
                                if r["status"] == "done"}, truth_by_content(args.ground_truth))
        if not truth.frames:
            raise ConfigError(f"none of mission {args.mission!r}'s images is in "
                              f"{args.ground_truth}/boxes.json")
    page = build_report(args.mission, rows, results.read_image, device_id=_device_id(state),
                        ground_truth=truth)
    atomic_write(out, page)
    size = len(page.encode())
    written: dict[str, object] = {"html": str(out), "bytes": size, "images": len(rows)}
    if truth is not None:
        written["ground_truth"] = dataclasses.asdict(truth)
    if not args.json:
        print(f"wrote {out} ({len(rows)} images, {size // 1024} kB)")
        if truth is not None:
            print(truth.line())
    if args.pdf:
        pdf = out.with_suffix(".pdf")
        html_to_pdf(out, pdf)  # raises with a clear message when there is no converter
        written["pdf"] = str(pdf)
        if not args.json:
            print(f"wrote {pdf}")
    if args.json:
        print_json(written)
    return 0
