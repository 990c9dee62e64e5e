"""``spoke models list|activate VERSION|rollback``: the appliance's model store, by hand
(``create`` and ``show`` for artifacts on disk are in ``daemon.commands.artifacts``).

``activate`` and ``rollback`` are an operator's choice on site: they verify and smoke-test the
model, swap the ``current`` link atomically, hold that choice against the hub's desired state
until the hub desires something new, and tell a running daemon (SIGHUP) to serve it.
Heavy modules (torch, onnxruntime) are imported inside ``activate`` only.
"""

import argparse
import signal
import time
from typing import Any

from pydantic import BaseModel

from appliance.cli import print_json, print_table
from appliance.config import DaemonConfig, load_config
from appliance.errors import ConfigError
from daemon.commands import artifacts
from daemon.commands.run import ENV_PREFIX, add_state_dir
from daemon.delivery.store import ModelStore
from daemon.state import StateDir, signal_daemon


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="models: list the store, activate a version, roll back; "
                       "create or show an artifact")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="models in the store and which one is active")
    add_state_dir(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_models)
    a = msub.add_parser("activate", help="verify, smoke-test and activate a stored version")
    add_state_dir(a)
    a.add_argument("version")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=activate)
    r = msub.add_parser("rollback", help="go back to the previous model")
    add_state_dir(r)
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=rollback)
    artifacts.add_parsers(msub)


def _store(args: argparse.Namespace) -> ModelStore:
    """The store as it is: reading it never creates it (a state dir may not be ours)."""
    root = StateDir(args.state_dir.resolve()).root / "models"
    return ModelStore(root, create=root.is_dir())


def collect(store: ModelStore) -> dict[str, Any]:
    journal = store.journal()
    current, previous = store.current(), store.previous()
    entries = []
    for meta in store.entries():
        sha = meta["sha256"]
        role = "active" if sha == current else "previous" if sha == previous else ""
        if sha == journal.committed and role == "active":
            role = "active, committed"
        elif role == "active" and journal.probation:
            role = "active, health gate running"
        refused = journal.refused.get(sha)
        entries.append(meta | {"role": role, "refused": refused.code if refused else None})
    desired = journal.desired_model
    return {
        "active": store.meta(current) if current else None,
        "entries": entries,
        "desired": desired.model_dump(mode="json") if desired else None,
        "hold": _dump(journal.hold),
        "probation": _dump(journal.probation),
        "last_error": _dump(journal.last_error),
    }


def _dump(part: BaseModel | None) -> dict[str, Any] | None:
    return part.model_dump(mode="json") if part is not None else None


def list_models(args: argparse.Namespace) -> int:
    info = collect(_store(args))
    if args.json:
        print_json(info)
        return 0
    print_table(
        [
            {
                "version": m.get("version"),
                "name": m.get("name"),
                "sha256": str(m["sha256"])[:12],
                "size": f"{int(m.get('length', 0)) / 2**20:.1f} MiB",
                "role": m["role"] or "-",
                "refused": m["refused"] or "",
            }
            for m in info["entries"]
        ],
        ["version", "name", "role", "size", "sha256", "refused"],
    )
    desired = info["desired"]
    print(f"desired: {desired['name']}@{desired['version']}" if desired else "desired: -",
          "(held by the operator)" if info["hold"] else "")
    if info["last_error"]:
        err = info["last_error"]
        print(f"last refusal: {err.get('version')}: {err.get('code')}: {err.get('reason')}")
    return 0


def _hold(store: ModelStore, sha: str, action: str) -> None:
    journal = store.journal()
    journal.hold_at(sha, action, time.time())
    store.save(journal)


def activate(args: argparse.Namespace) -> int:
    from daemon.delivery.service import prepare_model

    state = StateDir(args.state_dir.resolve())
    store = _store(args)
    meta = store.by_version(args.version)
    if meta is None:
        have = ", ".join(str(m.get("version")) for m in store.entries()) or "none"
        raise ConfigError(f"version {args.version} is not in the store (have: {have}); "
                          "the hub delivers versions through its desired state")
    config = load_config(DaemonConfig, state.config, ENV_PREFIX)
    model = prepare_model(store.path(meta["sha256"]), config.models.backend)
    model.backend.close()
    with store.locked():
        store.activate(meta["sha256"], "operator: spoke models activate", probation=False)
        _hold(store, meta["sha256"], "activate")
    told = signal_daemon(state, signal.SIGHUP)
    return _report(args, f"activated {meta['name']}@{meta['version']}", told)


def rollback(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir.resolve())
    store = _store(args)
    if store.previous() is None or store.previous() == store.current():
        raise ConfigError("there is no previous model to roll back to")
    with store.locked():
        back = store.rollback("operator: spoke models rollback")
        assert back is not None
        _hold(store, back, "rollback")
    meta = store.meta(back) or {}
    told = signal_daemon(state, signal.SIGHUP)
    return _report(args, f"rolled back to {meta.get('name')}@{meta.get('version')}", told)


def _report(args: argparse.Namespace, what: str, told: bool) -> int:
    if args.json:
        print_json({"result": what, "daemon_notified": told})
    else:
        print(what + ("; the running daemon now serves it" if told else
                      "; it is served when the daemon starts"))
    return 0
