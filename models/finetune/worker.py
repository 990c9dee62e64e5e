"""``python -m models.finetune.worker JOB_DIR``: one fine-tuning job in its own process.

Reads ``JOB_DIR/job.json`` (a ``JobSpec``), writes one JSON object per line on stdout
(``{"event": "progress", ...}``, then ``{"event": "result", ...}`` or ``{"event": "error",
"code": ..., "reason": ...}``) and ``JOB_DIR/result.json``. Exit status: 0 done, 2 bad input,
3 disk full, 1 anything else. The caller sets niceness and thread caps; a checkpoint in the job
directory makes a re-run continue where a killed one stopped.
"""

from __future__ import annotations

import errno
import json
import sys
import traceback
from pathlib import Path
from typing import Any

RESULT = "result.json"
JOB = "job.json"


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m models.finetune.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    from appliance.errors import DataError
    from appliance.fsutil import atomic_write
    from models.finetune.job import JobSpec, run_job
    from models.finetune.split import TooFewSamples

    try:
        spec = JobSpec.from_dict(json.loads((job_dir / JOB).read_text()))
        result = run_job(spec, report=lambda d: emit("progress", **d),
                         log=lambda line: emit("log", line=line))
    except TooFewSamples as exc:
        emit("error", code="too_few_samples", reason=str(exc))
        return 2
    except DataError as exc:
        emit("error", code="bad_input", reason=str(exc))
        return 2
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            emit("error", code="disk_full",
                 reason=f"disk full while writing the job's files ({exc}); the last complete "
                        "checkpoint is kept and the job resumes from it once there is room")
            return 3
        emit("error", code="io_error", reason=str(exc))
        return 1
    except Exception as exc:
        emit("log", line=traceback.format_exc())
        emit("error", code="internal", reason=f"{type(exc).__name__}: {exc}")
        return 1
    try:
        atomic_write(job_dir / RESULT, json.dumps(result.to_dict(), indent=2))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            emit("error", code="disk_full", reason=f"disk full while writing the result: {exc}")
            return 3
        raise
    emit("result", **result.to_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
