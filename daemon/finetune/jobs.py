"""Fine-tuning jobs in SQLite (``STATE/finetune/finetune.db``), one directory each.

A job is ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. At most one job
is queued or running at a time: ``create`` refuses a second one in the same transaction that
would insert it, so two callers (API and CLI) cannot both start one. A job left ``running`` by a
crash goes back to ``queued`` on start and resumes from its checkpoint.
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field

from appliance.errors import DataError
from appliance.finetune import JobResult
from appliance.store import connect


class JobStatus(StrEnum):
    """Where a job is: waiting, running in its worker, or ended one of three ways."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
#: What ``spoke finetune start|cancel`` (another process) sends the daemon once it has written
#: a job row: the runner looks at the rows again then, instead of polling them.
JOBS_CHANGED = signal.SIGUSR1
_ACTIVE_SQL = "status IN (?, ?)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    progress TEXT,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
"""
JSON_COLUMNS = ("options", "progress", "result", "error")


class JobOutcome(JobResult):
    """A done job's ``result`` column: the worker's ``JobResult`` plus what became of the
    candidate (``promotion``: its state and why) and of the review upload, if one was sent."""

    promotion: dict[str, Any] = Field(default_factory=dict)
    review_upload: dict[str, Any] | None = None

    @classmethod
    def of(cls, result: JobResult, promotion: dict[str, Any]) -> JobOutcome:
        return cls.model_validate(result.model_dump() | {"promotion": promotion})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"review_upload"} if
                               self.review_upload is None else set())


class JobConflict(DataError):
    """Another job is queued or running."""


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs_dir = root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db: sqlite3.Connection = connect(root / "finetune.db")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        for key in JSON_COLUMNS:
            out[key] = json.loads(out[key]) if out[key] else None
        out["cancel"] = bool(out["cancel"])
        return out

    def create(self, options: dict[str, Any]) -> dict[str, Any]:
        job_id = time.strftime("ft-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            busy = self.db.execute(
                f"SELECT id, status FROM jobs WHERE {_ACTIVE_SQL}", ACTIVE).fetchone()
            if busy is not None:
                raise JobConflict(f"job {busy['id']} is {busy['status']}; one job runs at a "
                                  "time (wait for it, or cancel it)")
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self.db.execute(
                "INSERT INTO jobs (id, seq, status, options, created_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, seq, JobStatus.QUEUED, json.dumps(options), time.time()))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        got = self.get(job_id)
        assert got is not None
        return got

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        return [self._row(r) for r in rows]

    def active(self) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT * FROM jobs WHERE {_ACTIVE_SQL} ORDER BY seq LIMIT 1",
                              ACTIVE).fetchone()
        return self._row(row) if row else None

    def update(self, job_id: str, **values: Any) -> None:
        cols = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v
                for k, v in values.items()}
        assign = ", ".join(f"{k} = ?" for k in cols)
        with self.db:
            self.db.execute(f"UPDATE jobs SET {assign} WHERE id = ?", (*cols.values(), job_id))

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job is None:
            raise DataError(f"no job {job_id}")
        if job["status"] in FINAL:
            raise JobConflict(f"job {job_id} is already {job['status']}")
        self.update(job_id, cancel=1)
        got = self.get(job_id)
        assert got is not None
        return got

    def requeue_interrupted(self) -> list[str]:
        with self.db:
            self.db.execute("UPDATE jobs SET status = ? WHERE status = ?",
                            (JobStatus.QUEUED, JobStatus.RUNNING))
        return [r["id"] for r in self.db.execute(
            "SELECT id FROM jobs WHERE status = ? ORDER BY seq", (JobStatus.QUEUED,))]
