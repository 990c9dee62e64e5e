"""``make bench``: every benchmark in turn, each against its own baseline in the same run.

Results print as they come; docs/BENCHMARKS.md records them with the machine they ran on.
Pass ``--only NAME`` (repeatable) to run a subset; names are the keys of BENCHMARKS.
"""

import argparse
import subprocess
import sys
import time

from tests.support.fleet import REPO

BENCHMARKS: dict[str, list[str]] = {
    "inference": ["-m", "daemon", "bench"],
    "infer": ["-m", "scripts.bench_infer"],
    "health": ["-m", "scripts.bench_health"],
    "fleet": ["-m", "scripts.bench_fleet"],
    "hubscale": ["-m", "scripts.bench_hubscale"],
    "dashboard": ["-m", "scripts.bench_dashboard"],
    "uplink": ["-m", "scripts.bench_uplink"],
    "delivery": ["-m", "scripts.bench_delivery"],
    "finetune": ["-m", "scripts.bench_finetune"],
    "pretrain": ["-m", "scripts.bench_pretrain"],
    "foundation": ["-m", "scripts.bench_foundation", "--default", "--scratch"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS))
    args = parser.parse_args()
    failed = []
    for name in args.only or list(BENCHMARKS):
        print(f"\n==> benchmark: {name}", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, *BENCHMARKS[name]], cwd=REPO).returncode
        print(
            f"==> {name}: {'ok' if code == 0 else f'failed ({code})'} "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if code:
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
