"""One job's worker process (``python -m models.finetune.worker JOB_DIR``), supervised.

It runs at a raised niceness with capped threads, so the daemon and the uplink keep their
CPU, and dies with the daemon (``PR_SET_PDEATHSIG``). Its stdout is one JSON object a line:
progress goes to ``on_progress``, the result is validated as an ``appliance.finetune.JobResult``
on arrival. A cancel written by ``spoke finetune cancel`` (another process) is seen when that
command wakes the daemon (``jobs.JOBS_CHANGED``): the runner then asks ``cancelled``; the
daemon's own cancel terminates the worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from appliance.config import FinetuneSection
from appliance.finetune import JobResult

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerEnd:
    """How a worker ended: ``done`` with a result, ``error`` with the worker's own error,
    ``cancelled``, or ``killed`` (it died without saying why: resumable)."""

    outcome: Literal["done", "error", "killed", "cancelled"]
    error: dict[str, Any] | None = None
    result: JobResult | None = None


def _child_limits(niceness: int) -> Callable[[], None]:
    def apply() -> None:
        with contextlib.suppress(OSError):
            os.nice(niceness)
        with contextlib.suppress(Exception):  # Linux only: die with the daemon
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


class Worker:
    def __init__(self, job_id: str, job_dir: Path, config: FinetuneSection) -> None:
        self.job_id = job_id
        self.job_dir = job_dir
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def wait(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), timeout)

    async def run(self, on_progress: Callable[[dict[str, Any]], Awaitable[None]],
                  cancelled: Callable[[], Awaitable[bool]], woken: asyncio.Event) -> WorkerEnd:
        """Run the worker to its end; each time ``woken`` is set, ask ``cancelled``."""
        env = dict(os.environ)
        threads = str(self.config.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   OPENBLAS_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        stderr = (self.job_dir / "worker.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "models.finetune.worker", str(self.job_dir),
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
                preexec_fn=_child_limits(self.config.niceness), limit=1 << 22)
        finally:
            stderr.close()
        self._proc = proc
        log.info("fine-tune worker started", extra={"job": self.job_id, "pid": proc.pid,
                                                    "niceness": self.config.niceness,
                                                    "threads": self.config.threads})
        watcher = asyncio.create_task(self._watch_cancel(cancelled, woken))
        result: JobResult | None = None
        error: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                kind = msg.pop("event", None)
                if kind == "progress":
                    await on_progress(msg)
                elif kind == "result":
                    try:
                        result = JobResult.model_validate(msg)
                    except ValidationError as exc:
                        error = {"code": "internal",
                                 "reason": f"the worker's result is malformed: {exc}"}
                elif kind == "error":
                    error = msg
                elif kind == "log":
                    log.info("fine-tune: %s", str(msg.get("line", "")).rstrip())
            code = await proc.wait()
        finally:
            watcher.cancel()
        if await cancelled():
            return WorkerEnd("cancelled")
        if result is not None and code == 0:
            return WorkerEnd("done", result=result)
        if error is not None:
            return WorkerEnd("error", error=error)
        return WorkerEnd("killed", {"code": "worker_died",
                                    "reason": f"exit status {code} with no result"})

    async def _watch_cancel(self, cancelled: Callable[[], Awaitable[bool]],
                            woken: asyncio.Event) -> None:
        while self.pid is not None:
            await woken.wait()
            woken.clear()
            if await cancelled():
                self.terminate()
                return
