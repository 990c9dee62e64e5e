"""``spoke finetune start|status|list|cancel``: fine-tuning jobs on this appliance.

Jobs run inside ``spoke run`` (one at a time, in a worker process); this command queues one in
the state directory's job store, which the daemon picks up within a second, and with ``--wait``
follows it to its end: progress, then the current model's and the candidate's metrics on the
held-out split, and whether the candidate was promoted and why. The exit status of ``--wait``
is 0 when the job finished (promoted or not), 1 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from appliance.cli import print_json, print_table
from appliance.errors import ConfigError, DataError
from daemon.commands.run import add_state_dir
from daemon.finetune.jobs import ACTIVE, FINAL, JOBS_CHANGED, JobStatus
from daemon.finetune.options import METHODS
from daemon.state import StateDir, daemon_running, read_status, signal_daemon


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune the active model on the labeled samples")
    fsub = p.add_subparsers(dest="finetune_command", required=True, metavar="ACTION")
    s = fsub.add_parser("start", help="start a job (runs inside the daemon)")
    add_state_dir(s)
    s.add_argument("--method", choices=METHODS, default="auto",
                   help="linear probe, LoRA, last blocks, full (default: from the sample count "
                        "and the hardware)")
    s.add_argument("--budget", help="time cap, e.g. 90s, 10m (default [finetune] "
                   "default_budget_s)")
    s.add_argument("--epochs", type=int, help="epochs (else the method's default or the budget)")
    s.add_argument("--seed", type=int)
    s.add_argument("--adapt", type=int, metavar="STEPS",
                   help="site-adaptation steps (self-supervised, on the samples' images) before "
                        "the few-shot step (default 0: none)")
    s.add_argument("--wait", action="store_true", help="follow the job to its end")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=start)
    st = fsub.add_parser("status", help="a job's state and outcome (default: the latest)")
    add_state_dir(st)
    st.add_argument("job", nargs="?")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=status)
    ls = fsub.add_parser("list", help="recent jobs")
    add_state_dir(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_jobs)
    c = fsub.add_parser("cancel", help="cancel a queued or running job")
    add_state_dir(c)
    c.add_argument("job")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=cancel)


def _jobs(args: argparse.Namespace) -> Any:
    from daemon.finetune.jobs import JobStore

    return JobStore(args.state_dir.resolve() / "finetune")


def precheck(state_dir: Path, seed: int) -> None:
    """The checks the daemon makes too, made here for an immediate answer: an active model,
    known labels, enough samples to hold some out."""
    from daemon.finetune.samples import SampleStore, active_labels, job_split
    from daemon.finetune.service import load_section

    known, model = active_labels(state_dir)
    if model is None:
        raise DataError("no active model to fine-tune yet")
    store = SampleStore(state_dir / "finetune")
    try:
        rows, accepted = store.rows(), store.accepted_labels()
    finally:
        store.close()
    job_split(rows, known, accepted, model, load_section(state_dir).held_out_fraction, seed)


def start(args: argparse.Namespace) -> int:
    from daemon.finetune.options import check_options

    state_dir = args.state_dir.resolve()
    options = check_options({"method": args.method, "budget": args.budget,
                             "epochs": args.epochs, "seed": args.seed,
                             "adapt": args.adapt})
    if not daemon_running(read_status(StateDir(state_dir))):
        raise ConfigError(f"no daemon is running for {state_dir}: jobs run inside `spoke run` "
                          "(start it, then try again)")
    precheck(state_dir, int(options.get("seed", 0)))
    jobs = _jobs(args)
    try:
        job = jobs.create(options | {"source": "cli"})
    finally:
        jobs.close()
    _tell_daemon(state_dir)
    if not args.wait:
        if args.json:
            print_json(job)
        else:
            print(f"queued {job['id']}; follow it with `spoke finetune status {job['id']}`")
        return 0
    return follow(args, job["id"])


def _progress_line(progress: dict[str, Any]) -> str | None:
    phase = progress.get("phase")
    if phase == "train":
        steps = progress.get("steps")
        of = f"/{steps}" if steps else ""
        return (f"  training: step {progress.get('step')}{of}, loss {progress.get('loss')}, "
                f"{progress.get('elapsed_s')} s")
    if phase == "queued":
        return (f"  queued: {_plan_words(progress)}{_quiet_words(progress)} -> "
                f"{progress.get('name')}@{progress.get('version')}")
    return f"  {phase}" if phase else None


def _plan_words(plan: dict[str, Any]) -> str:
    """What a queued job will do with the samples: train on all and judge each out of fold,
    a split of them, or, for a model that decides per frame, tiles that train and labeled
    frames that calibrate or judge."""
    method = plan.get("method")
    if plan.get("out_of_fold"):
        return (f"{method} on {plan.get('samples')} samples, each judged out of fold "
                "(by a fit that never saw it)")
    if "frames" not in plan:
        return f"{method} on {plan.get('samples')} samples ({plan.get('held_out')} held out)"
    return (f"{method} on {plan.get('train')} tiles; {plan.get('frames')} labeled frames: "
            f"{plan.get('calibration')} calibrate its thresholds, {plan.get('held_out')} "
            "judge it against the current model, per frame")


def _quiet_words(plan: dict[str, Any]) -> str:
    """What the plan does with the labels no sample carries (``models.finetune.quiet``)."""
    names = ", ".join(plan.get("untrained") or [])
    if not names:
        return ""
    if not plan.get("background"):
        return f"; no background sample, so {names} keep the parent's thresholds"
    unit = "calibration frames" if "frames" in plan else "samples"
    return (f"; {names} (no sample carries them) keep the parent's head, their thresholds "
            f"raised to stay quiet on the {plan['background']} background {unit}")


def _rule_line(rule: dict[str, Any]) -> str:
    """What the background rule did in a finished job."""
    if not rule["background"]:
        return "  no background sample: labels no sample carries keep the parent's thresholds"
    raised = "; ".join(f"{name} {old:.3f} -> {new:.3f}"
                       for name, (old, new) in rule["raised"].items())
    return (f"  labels no sample carries, on the {rule['background']} background samples: "
            + (f"raised {raised}" if raised else "none fired, thresholds kept"))


def follow(args: argparse.Namespace, job_id: str, poll_s: float = 0.5) -> int:
    jobs = _jobs(args)
    last: str | None = None
    try:
        while True:
            job = jobs.get(job_id)
            if job is None:
                raise DataError(f"no job {job_id}")
            if not args.json:
                line = _progress_line(job["progress"] or {})
                if line and line != last:
                    print(line, flush=True)
                    last = line
            if job["status"] in FINAL:
                break
            time.sleep(poll_s)
    finally:
        jobs.close()
    if args.json:
        print_json(job)
    else:
        show(job)
    return 0 if job["status"] == JobStatus.DONE else 1


def show(job: dict[str, Any]) -> None:
    print(f"job {job['id']}: {job['status']}")
    if job["error"]:
        print(f"  error ({job['error'].get('code')}): {job['error'].get('reason')}")
    result = job["result"]
    if not result:
        return
    comparison = result["comparison"]
    cur, cand = comparison["current"], comparison["candidate"]
    folds = (result.get("details") or {}).get("gate_folds")
    judged = (f"each judged out of fold ({folds} folds)" if folds
              else f"{result['held_out']} held out")
    print(f"  {result['method']} on {result['train']} samples, {judged}, "
          f"{result['steps']} steps in {result['train_seconds']} s"
          + (f" (resumed at step {result['resumed_from']})" if result["resumed_from"] else "")
          + (f"; {len(result['skipped'])} unreadable sample(s) skipped" if result["skipped"]
             else ""))
    rows = [{"label": name, "current": f"{cur['per_label_f1'][name]:.3f}",
             "candidate": f"{cand['per_label_f1'][name]:.3f}",
             "change": f"{comparison['per_label_delta'][name]:+.3f}"}
            for name in cand["per_label_f1"]]
    rows.append({"label": "macro-F1", "current": f"{cur['macro_f1']:.3f}",
                 "candidate": f"{cand['macro_f1']:.3f}",
                 "change": f"{comparison['macro_f1_delta']:+.3f}"})
    rows.append({"label": "exact match", "current": f"{cur['exact_match']:.3f}",
                 "candidate": f"{cand['exact_match']:.3f}", "change": ""})
    rule = (result.get("details") or {}).get("background_rule")
    if rule is not None:
        print(_rule_line(rule))
    frames = (result.get("details") or {}).get("frames")
    if frames:
        print(f"  judged per frame, the decision the current model's thresholds are for: "
              f"{frames['calibration']} labeled frames calibrated the candidate's thresholds, "
              f"{frames['held_out']} held out for the gate")
    print_table(rows, ["label", "current", "candidate", "change"])
    verdict = "passed" if comparison["promote"] else "refused"
    print(f"evaluation gate {verdict}: " + "; ".join(comparison["reasons"]))
    promotion = result.get("promotion") or {}
    state = promotion.get("state")
    if state in ("activated", "committed"):
        print(f"promoted: {promotion.get('version')} ({state}; signed by "
              f"{promotion.get('signer')})")
    elif state == "rolled-back":
        print(f"promoted {promotion.get('version')}, but the health gate rolled it back")
    else:
        print(f"not promoted: {promotion.get('reason')}")


def status(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    try:
        job = jobs.get(args.job) if args.job else next(iter(jobs.recent(1)), None)
    finally:
        jobs.close()
    if job is None:
        raise DataError(f"no job {args.job}" if args.job else "no fine-tune job yet")
    if args.json:
        print_json(job)
    else:
        show(job)
        line = _progress_line(job["progress"] or {})
        if job["status"] in ACTIVE and line:
            print(line)
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    try:
        rows = jobs.recent(20)
    finally:
        jobs.close()
    if args.json:
        print_json(rows)
        return 0

    def outcome(job: dict[str, Any]) -> str:
        result = job["result"] or {}
        promotion = (result.get("promotion") or {}).get("state")
        if job["error"]:
            return str(job["error"].get("code"))
        return str(promotion or "")

    print_table([{"job": j["id"], "status": j["status"],
                  "method": (j["result"] or {}).get("method") or j["options"].get("method"),
                  "outcome": outcome(j)} for j in rows], ["job", "status", "method", "outcome"])
    return 0


def _tell_daemon(state_dir: Path) -> None:
    """The daemon looks at the job rows when told (``JOBS_CHANGED``), not on a timer."""
    if not signal_daemon(StateDir(state_dir), JOBS_CHANGED) and daemon_running(
            read_status(StateDir(state_dir))):
        print("warning: could not signal the daemon (run this as its user or root); it sees "
              "the job when it next starts", file=sys.stderr)


def cancel(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    try:
        job = jobs.request_cancel(args.job)
    finally:
        jobs.close()
    _tell_daemon(args.state_dir.resolve())
    if args.json:
        print_json(job)
    else:
        print(f"cancelling {job['id']}" + ("" if job["status"] == JobStatus.QUEUED else
                                           " (the worker is being stopped)"))
    if job["status"] == JobStatus.QUEUED:
        sys.stdout.flush()
    return 0
