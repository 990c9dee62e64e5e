"""``spoke report MISSION --state-dir DIR --out report.html [--pdf]``: the inspector's mission
report as one self-contained HTML file (``daemon/web/report.py``), and a PDF beside it with
``--pdf`` when headless Chromium is installed.

It reads the results store read-only, so it works while the daemon runs and after it stopped.
"""

import argparse
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
    page = build_report(args.mission, rows, results.read_image, device_id=_device_id(state))
    atomic_write(out, page)
    size = len(page.encode())
    written: dict[str, object] = {"html": str(out), "bytes": size, "images": len(rows)}
    if not args.json:
        print(f"wrote {out} ({len(rows)} images, {size // 1024} kB)")
    if args.pdf:
        pdf = out.with_suffix(".pdf")
        html_to_pdf(out, pdf)  # raises with a clear message when there is no converter
        written["pdf"] = str(pdf)
        if not args.json:
            print(f"wrote {pdf}")
    if args.json:
        print_json(written)
    return 0
