"""The fine-tune job runner inside ``spoke run``: it plans, queues and runs one job at a time.

Its pieces each have a module: options (``options.py``), the job rows (``jobs.py``), the
worker process and its supervision (``runner.py``: niceness, thread caps, dies with the
daemon), live updates for server-sent-event subscribers (``feed.py``), signing and installing
a candidate (``promote.py``) and the review upload (``review.py``). A job that was running when
the daemon died is queued again on start and resumes from its checkpoint; a worker killed from
outside (the OOM killer, kill -9) is restarted from its checkpoint a few times.

Progress goes to the job row, to the feed and, throttled, to the hub as ``finetune_progress``
events; the outcome goes to the hub as ``finetune_finished`` (or ``finetune_failed`` /
``finetune_cancelled``) and into the reported state. A candidate that passes the evaluation
gate is promoted, and its fate under the model health gate is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.config import FinetuneSection
from appliance.errors import DataError, SpokeError
from appliance.finetune import JobResult
from appliance.fsutil import atomic_write
from appliance.service import Notify, TaskGroupService, tell, unheard
from daemon.finetune.feed import JobFeed
from daemon.finetune.jobs import JOBS_CHANGED, JobConflict, JobOutcome, JobStatus, JobStore
from daemon.finetune.options import OPTION_KEYS, check_options
from daemon.finetune.promote import Promoter
from daemon.finetune.runner import Worker
from daemon.finetune.samples import SampleStore, job_split, label_targets

if TYPE_CHECKING:
    from models.artifact import ModelCard

log = logging.getLogger(__name__)

T = TypeVar("T")
Emit = Callable[[str, dict[str, Any]], object]
#: Sends a promoted job's review files to the hub: its answer, or None when there is no hub
#: to send to (not enrolled yet, or ``--standalone``).
ReviewUpload = Callable[[Path, JobOutcome], Awaitable[dict[str, Any] | None]]
MAX_ATTEMPTS = 3
PROGRESS_EVENT_EVERY_S = 5.0


class FinetuneService(TaskGroupService):
    name = "finetune"

    def __init__(self, root: Path, config: FinetuneSection, provider: Any, emit: Emit,
                 models: Any = None, device_key: Callable[[], Path] | None = None,
                 on_change: Notify = unheard, upload: ReviewUpload | None = None) -> None:
        """``device_key``: where the device key is read from now (it moves with renewals);
        ``on_change`` runs when ``reported()`` changes; ``upload`` sends review files
        (``[finetune] upload = "weights"``)."""
        super().__init__()
        self.root = root
        self.config = config
        self.provider = provider
        self.emit = emit
        self.models = models  # daemon.delivery.service.ModelService, or None (--model)
        self.promoter = Promoter(models, device_key)
        self.samples: SampleStore | None = None
        self.jobs: JobStore | None = None
        self.on_change = on_change
        self.upload = upload
        self._db_exec = ThreadPoolExecutor(1, thread_name_prefix="finetune-db")
        self._wake = asyncio.Event()
        self.feed = JobFeed()
        self._worker: Worker | None = None
        self._last_event = 0.0
        self._stopping = False
        self._reported: dict[str, Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.samples = await self.db(SampleStore, self.root)
        self.jobs = await self.db(JobStore, self.root)
        resumed = await self.db(self.jobs.requeue_interrupted)
        if resumed:
            log.info("fine-tune jobs to resume", extra={"jobs": resumed})
        self._stopping = False
        self._reported = await self.db(self._summary)
        # Left in place on stop: removing it would restore SIGUSR1's default, which ends the
        # process (a restart builds a new service, whose start takes the signal over).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(JOBS_CHANGED, self.wake)
        self.spawn(self._loop(), "runner")

    @property
    def worker_pid(self) -> int | None:
        """The process id of the running job's worker, if one runs."""
        return self._worker.pid if self._worker is not None else None

    async def stop(self) -> None:
        self._stopping = True
        worker = self._worker
        if worker is not None:
            worker.terminate()
        await self.cancel_tasks()
        if worker is not None:
            worker.kill()
            await worker.wait(5)
        for store in (self.samples, self.jobs):
            if store is not None:
                await self.db(store.close)
        self._db_exec.shutdown(wait=True)
        self._db_exec = ThreadPoolExecutor(1, thread_name_prefix="finetune-db")

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every store call on one thread, in order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_exec, functools.partial(fn, *args, **kwargs))

    def wake(self) -> None:
        self._wake.set()

    # -- what the API and the hub see ----------------------------------------------------------

    def known_labels(self) -> tuple[list[str], str | None]:
        """The active model's labels and ``name@version``."""
        model = self.provider.current()
        if model is None:
            from daemon.finetune.samples import active_labels

            return active_labels(self.root.parent)
        return list(model.artifact.card.labels), f"{model.name}@{model.version}"

    def model_changed(self, model: Any) -> None:
        """Record the served model's labels so ``spoke samples`` can check them offline."""
        if model is None:
            return
        with contextlib.suppress(Exception):
            card = model.artifact.card
            atomic_write(self.root / "active-model.json", json.dumps(
                {"name": card.name, "version": card.version, "labels": list(card.labels)}))

    def reported(self) -> dict[str, Any] | None:
        """The last job, for the reported state (cached: this runs on the event loop)."""
        return self._reported

    def _summary(self) -> dict[str, Any] | None:
        assert self.jobs is not None
        recent = self.jobs.recent(1)
        if not recent:
            return None
        job = recent[0]
        result = job["result"] or {}
        comparison = result.get("comparison") or {}
        promotion = result.get("promotion") or {}
        return {
            "job": job["id"], "status": job["status"],
            "method": result.get("method") or (job["options"] or {}).get("method"),
            "macro_f1_current": (comparison.get("current") or {}).get("macro_f1"),
            "macro_f1_candidate": (comparison.get("candidate") or {}).get("macro_f1"),
            "promotion": promotion.get("state"),
            "version": promotion.get("version"),
            "error": (job["error"] or {}).get("reason"),
        }

    async def _changed(self) -> None:
        self._reported = await self.db(self._summary)
        await tell(self.on_change)

    # -- starting and cancelling -------------------------------------------------------------

    def plan(self, options: dict[str, Any]) -> dict[str, Any]:
        """Everything a job needs, checked now: the parent model, the samples, the label set
        and a split that works. Raises a ``DataError`` naming what is wrong."""
        from models.finetune.quiet import untrained
        from models.finetune.spec import default_method, judged_out_of_fold

        assert self.samples is not None
        model = self.provider.current()
        if model is None:
            raise DataError("no active model to fine-tune yet")
        card = model.artifact.card
        rows = self.samples.rows()
        seed = int(options.get("seed", 0))
        split: dict[str, int]
        if card.decision.unit == "frame":
            labels, split = self._frame_split(rows, card, seed)
            background = split.pop("background")
        else:
            labels, train, held = job_split(rows, card.labels, self.samples.accepted_labels(),
                                            card.ref, self.config.held_out_fraction, seed)
            split = {"train": len(train), "held_out": len(held)}
            background = _background([rows[i] for i in train])
        taken: list[str] = []
        if self.models is not None:
            taken = [str(m.get("version")) for m in self.models.store.entries()]
        from daemon.finetune.promote import next_version

        method = options["method"]
        if method == "auto":
            method = default_method(split["train"], gpu=bool(_gpus()))
        if judged_out_of_fold(method, "frames" in split, options.get("adapt") or 0):
            split = {"train": len(rows), "held_out": len(rows), "out_of_fold": True}
            background = _background(rows)
        return {
            "parent": card.ref, "parent_path": str(model.artifact.root),
            "name": card.name, "version": next_version(card.version, taken),
            "labels": labels, "method": method, "samples": len(rows), **split,
            # labels no sample carries keep the parent's row, quiet on the background samples
            "untrained": untrained(labels, {n for row in rows for n in row["labels"]}),
            "background": background,
            "sample_list": [[str(self.samples.path(r)), r["labels"]] for r in rows],
        }

    def _frame_split(self, rows: list[dict[str, Any]], card: ModelCard, seed: int
                     ) -> tuple[list[str], dict[str, int]]:
        """A parent that decides per frame: the tiles train, the labeled frames calibrate
        the candidate or are judged (``models.finetune.heldout.plan_frames``)."""
        from models.finetune.heldout import plan_frames

        assert self.samples is not None
        labels, targets = label_targets(rows, card.labels, self.samples.accepted_labels(),
                                        card.ref)
        plan = plan_frames([(r["width"], r["height"]) for r in rows], targets, labels,
                           card.preprocessing, card.decision, seed)
        return labels, {"train": plan.tiles, "held_out": plan.judged, "frames": plan.frames,
                        "calibration": plan.calibration, "background": plan.background}

    async def start_job(self, raw: dict[str, Any], source: str = "api") -> dict[str, Any]:
        """Validate, plan and queue a job; raises ``DataError`` (``JobConflict`` if busy)."""
        assert self.jobs is not None
        options = check_options(raw)
        active = await self.db(self.jobs.active)
        if active is not None:
            raise JobConflict(f"job {active['id']} is {active['status']}; one job runs at a "
                              "time (wait for it, or cancel it)")
        plan = await self.db(self.plan, options)
        job = await self.db(self.jobs.create, options | {"source": source})
        await self.db(self._write_spec, job["id"], options, plan)
        self.emit("finetune_queued", {"job": job["id"], "source": source,
                                      "method": plan["method"], "parent": plan["parent"],
                                      "samples": plan["samples"]})
        self.wake()
        return await self.db(self.jobs.get, job["id"]) or job

    def _write_spec(self, job_id: str, options: dict[str, Any], plan: dict[str, Any]) -> None:
        from models.finetune.spec import JobSpec

        assert self.jobs is not None
        job_dir = self.jobs.dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        budget = options.get("budget_s")
        if budget is None and options.get("epochs") is None:
            budget = self.config.default_budget_s
        spec = JobSpec(
            parent=plan["parent_path"],
            samples=tuple((p, tuple(labs)) for p, labs in plan["sample_list"]),
            labels=tuple(plan["labels"]), out=str(job_dir / "candidate"), name=plan["name"],
            version=plan["version"], method=plan["method"], epochs=options.get("epochs"),
            budget_s=budget, seed=int(options.get("seed", 0)),
            **({"adapt_steps": options["adapt"]} if options.get("adapt") is not None else {}),
            val_fraction=self.config.held_out_fraction, margin=self.config.margin,
            max_label_drop=self.config.max_label_drop, threads=self.config.threads,
            device="auto", gpu_memory_fraction=self.config.gpu_memory_fraction,
            checkpoint=str(job_dir / "checkpoint.pt"),
            checkpoint_every_s=self.config.checkpoint_every_s,
            checkpoint_every_steps=self.config.checkpoint_every_steps,
            # Where an engineer may "promote anyway", a refused candidate must be kept.
            always_export=self.config.allow_manual_promotion)
        atomic_write(job_dir / "job.json", json.dumps(spec.to_dict(), indent=2))
        plan_view = {k: v for k, v in plan.items() if k != "sample_list"}
        self.jobs.update(job_id, progress={"phase": "queued", **plan_view})

    async def cancel(self, job_id: str) -> dict[str, Any]:
        assert self.jobs is not None
        job = await self.db(self.jobs.request_cancel, job_id)
        worker = self._worker
        if worker is not None and worker.job_id == job_id:
            worker.terminate()
        self.wake()
        return job

    # -- the runner ------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self.jobs is not None
        while True:
            job = await self.db(self.jobs.active)
            if job is None:
                await self._wake.wait()  # a job from the API, or JOBS_CHANGED from the CLI
                self._wake.clear()
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("fine-tune job failed", extra={"job": job["id"]})
                await self._finish(job["id"], JobStatus.FAILED,
                                   error={"code": "internal", "reason": str(exc)})

    async def _run(self, job: dict[str, Any]) -> None:
        assert self.jobs is not None
        job_id = job["id"]
        job_dir = self.jobs.dir(job_id)
        if job["cancel"]:
            await self._finish(job_id, JobStatus.CANCELLED)
            return
        if not (job_dir / "job.json").exists():
            # Queued from the command line: plan it now (errors fail the job, clearly).
            try:
                options = check_options({k: v for k, v in job["options"].items()
                                         if k in OPTION_KEYS})
                if "budget_s" in job["options"]:
                    options["budget_s"] = float(job["options"]["budget_s"])
                plan = await self.db(self.plan, options)
                await self.db(self._write_spec, job_id, options, plan)
            except DataError as exc:
                await self._finish(job_id, JobStatus.FAILED, error={
                    "code": getattr(exc, "code", "bad_input"), "reason": str(exc)})
                return
        attempts = job["attempts"] + 1
        await self.db(self.jobs.update, job_id, status=JobStatus.RUNNING, attempts=attempts,
                      started_at=job["started_at"] or time.time())
        if attempts == 1:
            self.emit("finetune_started", {"job": job_id})
        else:
            log.info("resuming fine-tune job", extra={"job": job_id, "attempt": attempts})
        await self._changed()
        self._worker = Worker(job_id, job_dir, self.config)
        try:
            end = await self._worker.run(functools.partial(self._progress, job_id),
                                         functools.partial(self._cancel_requested, job_id),
                                         self._wake)
        finally:
            self._worker = None
        outcome, error, result = end.outcome, end.error, end.result
        if self._stopping:
            return  # left "running": the next start resumes it from its checkpoint
        if outcome == "killed":
            if attempts < MAX_ATTEMPTS:
                log.warning("fine-tune worker died; resuming from its checkpoint",
                            extra={"job": job_id, "error": error})
                await self.db(self.jobs.update, job_id, status=JobStatus.QUEUED)
                return
            await self._finish(job_id, JobStatus.FAILED, error={
                "code": "worker_died", "reason": f"the worker died {attempts} times: {error}"})
            return
        if outcome == "cancelled":
            (job_dir / "checkpoint.pt").unlink(missing_ok=True)
            await self._finish(job_id, JobStatus.CANCELLED)
            return
        if outcome == "error":
            await self._finish(job_id, JobStatus.FAILED, error=error)
            return
        assert result is not None
        finished = JobOutcome.of(result, await self._promote(job_id, job_dir, result))
        if finished.promotion.get("state") == "activated" and self.config.upload == "weights":
            answer = await self._upload(job_dir, finished)
            if answer is not None:
                finished = finished.model_copy(update={"review_upload": answer})
        await self._finish(job_id, JobStatus.DONE, result=finished)

    async def _cancel_requested(self, job_id: str) -> bool:
        assert self.jobs is not None
        job = await self.db(self.jobs.get, job_id)
        return job is not None and bool(job["cancel"])

    async def _progress(self, job_id: str, data: dict[str, Any]) -> None:
        assert self.jobs is not None
        data = {"ts": time.time(), **data}
        job = await self.db(self.jobs.get, job_id)
        merged = (job["progress"] if job else None) or {}
        merged.update(data)
        await self.db(self.jobs.update, job_id, progress=merged)
        self.feed.publish(job_id, {"job": job_id, "status": JobStatus.RUNNING,
                                   "progress": merged})
        now = time.monotonic()
        if data.get("phase") != "train" or now - self._last_event >= PROGRESS_EVENT_EVERY_S:
            self._last_event = now
            self.emit("finetune_progress", {"job": job_id, **data})

    async def _finish(self, job_id: str, status: JobStatus, *, error: dict[str, Any] | None = None,
                      result: JobOutcome | None = None) -> None:
        assert self.jobs is not None
        values: dict[str, Any] = {"status": status, "finished_at": time.time()}
        if error is not None:
            values["error"] = error
        if result is not None:
            values["result"] = result.to_dict()
        await self.db(self.jobs.update, job_id, **values)
        job = await self.db(self.jobs.get, job_id)
        event: dict[str, Any] = {"job": job_id, "status": status}
        if status == JobStatus.DONE and result is not None:
            comparison = result.comparison
            event.update(
                method=result.method, samples=result.samples, held_out=result.held_out,
                macro_f1_current=comparison.current.macro_f1,
                macro_f1_candidate=comparison.candidate.macro_f1,
                per_label_delta=comparison.per_label_delta, gate=comparison.promote,
                reasons=list(comparison.reasons), promotion=result.promotion,
                parent=result.parent, skipped=len(result.skipped))
            kind = "finetune_finished"
        elif status == JobStatus.FAILED:
            event["error"] = error
            kind = "finetune_failed"
        else:
            kind = "finetune_cancelled"
        self.emit(kind, event)
        log.info("fine-tune job ended", extra={"job": job_id, "status": status})
        self.feed.publish(job_id, job)
        self.feed.publish(job_id, None)
        await self._changed()

    # -- promotion -------------------------------------------------------------------------

    async def promote_anyway(self, job_id: str, by: str) -> dict[str, Any]:
        """Promote a candidate the gate kept back, because a person chose to (only where the
        site's policy, ``allow_manual_promotion``, permits). The override is recorded in the
        job's result with what the gate said, logged, and sent to the hub as
        ``finetune_manual_override``. Raises ``OverrideRefused`` naming why not."""
        assert self.jobs is not None
        if not self.config.allow_manual_promotion:
            raise OverrideRefused(403, "policy", "this site's policy does not allow promoting "
                                  "a candidate the gate refused ([finetune] "
                                  "allow_manual_promotion = false)")
        job = await self.db(self.jobs.get, job_id)
        if job is None:
            raise OverrideRefused(404, "not_found", f"no job {job_id}")
        result = _stored_outcome(job)
        state = result.promotion.get("state") if result is not None else None
        if job["status"] != JobStatus.DONE or result is None or result.comparison.promote or \
                state != "not-promoted":
            raise OverrideRefused(409, "not_overridable", f"job {job_id} is {job['status']}"
                                  f"{', promotion ' + state if state else ''}: only a finished "
                                  "job whose candidate the gate kept back can be promoted anyway")
        if not result.candidate:
            raise OverrideRefused(409, "no_candidate", f"job {job_id} kept no candidate (it ran "
                                  "before the site allowed manual promotion); run it again")
        comparison = result.comparison
        promotion = await self._promote(job_id, self.jobs.dir(job_id), result, override=True)
        promotion["override"] = {"by": by, "at": time.time(), "gate_promote": False,
                                 "gate_reasons": list(comparison.reasons)}
        result = result.model_copy(update={"promotion": promotion})
        await self.db(self.jobs.update, job_id, result=result.to_dict())
        log.warning("fine-tune candidate promoted against the gate",
                    extra={"job": job_id, "by": by, "state": promotion.get("state")})
        self.emit("finetune_manual_override", {
            "job": job_id, "by": by, "gate": False, "reasons": list(comparison.reasons),
            "macro_f1_current": comparison.current.macro_f1,
            "macro_f1_candidate": comparison.candidate.macro_f1,
            "promotion": {k: v for k, v in promotion.items() if k != "override"}})
        await self._changed()
        return await self.db(self.jobs.get, job_id) or job

    async def _promote(self, job_id: str, job_dir: Path, result: JobResult,
                       override: bool = False) -> dict[str, Any]:
        promotion = await self.promoter.promote(job_id, job_dir, result, override)
        if promotion["state"] == "activated":
            self.spawn(self._follow_gate(job_id, promotion["sha256"]), f"gate-{job_id}")
        return promotion

    async def _follow_gate(self, job_id: str, sha: str) -> None:
        """Record whether the health gate kept the promoted model."""
        assert self.jobs is not None
        committed = await self.promoter.kept(sha)
        job = await self.db(self.jobs.get, job_id)
        result = _stored_outcome(job) if job is not None else None
        if result is None:
            return
        promotion = result.promotion | {"state": "committed" if committed else "rolled-back"}
        await self.db(self.jobs.update, job_id,
                      result=result.model_copy(update={"promotion": promotion}).to_dict())
        self.emit("finetune_promotion", {"job": job_id, "sha256": sha,
                                         "state": promotion["state"],
                                         "version": promotion.get("version")})
        await self._changed()

    async def _upload(self, job_dir: Path, result: JobOutcome) -> dict[str, Any] | None:
        if self.upload is None:
            return None
        try:
            return await self.upload(job_dir, result)
        except SpokeError as exc:
            log.warning("review upload failed", extra={"error": str(exc)})
            return {"uploaded": False, "reason": str(exc)}


class OverrideRefused(DataError):
    """A "promote anyway" that may not happen; ``status`` and ``code`` for the API."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code


def _stored_outcome(job: dict[str, Any]) -> JobOutcome | None:
    """A job row's result, typed; None when the job has none."""
    return JobOutcome.model_validate(job["result"]) if job["result"] else None


def _background(rows: list[dict[str, Any]]) -> int:
    """How many of these samples are labeled background (what the background rule reads)."""
    return sum("background" in row["labels"] for row in rows)


def _gpus() -> list[Any]:
    with contextlib.suppress(Exception):
        from daemon.hub.hardware import nvidia_gpus

        return nvidia_gpus()
    return []


def load_section(state_dir: Path) -> FinetuneSection:
    """The ``[finetune]`` section as the daemon sees it (config file plus environment)."""
    from appliance.config import DaemonConfig, load_config

    return load_config(DaemonConfig, state_dir / "spoke.toml", "SPOKE_").finetune
