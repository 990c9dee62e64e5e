"""``spoke run``: the daemon."""

import argparse
import asyncio
import re
import signal
from pathlib import Path

from appliance.config import DaemonConfig, load_config
from appliance.errors import ConfigError
from appliance.logs import setup_logging
from appliance.service import run_until_signal
from daemon.app import Daemon, RunOptions
from daemon.finetune.jobs import JOBS_CHANGED
from daemon.hub.provisioner import read_verified_bundle
from daemon.loopwatch import LoopWatchdog
from daemon.state import StateDir, load_identity

DEFAULT_TRUST_KEY = Path("/etc/spoke/provisioning.pub")
ENV_PREFIX = "SPOKE_"


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/spoke"),
        help="where the identity and data live (default /var/lib/spoke)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the appliance daemon (provisions itself on first start)")
    add_state_dir(p)
    p.add_argument("--bundle", type=Path, help="provisioning bundle to use (else it searches)")
    p.add_argument(
        "--trust-key",
        type=Path,
        default=DEFAULT_TRUST_KEY,
        help=f"trusted provisioning public key (default {DEFAULT_TRUST_KEY})",
    )
    p.add_argument("--config", type=Path, help="config file (default STATE_DIR/spoke.toml)")
    p.add_argument(
        "--boot-dir",
        type=Path,
        default=Path("/boot/spoke"),
        help="where the image's boot partition may carry a bundle",
    )
    p.add_argument("--log-json", action="store_true", help="log JSON lines")
    p.add_argument("--model", type=Path, help="serve this model artifact on the drone uplink API")
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no hub: skip provisioning and serve the uplink API only (needs --model)",
    )
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="uplink API address (default [api] listen)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir.resolve())
    config = load_config(DaemonConfig, args.config or state.config, ENV_PREFIX)
    if args.listen:
        if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}", args.listen):
            raise ConfigError(f"--listen {args.listen!r}: expected HOST:PORT")
        api = config.api.model_copy(update={"listen": args.listen})
        config = config.model_copy(update={"api": api})
    if args.standalone and args.model is None:
        raise ConfigError("--standalone needs --model DIR: there is no hub to deliver one")
    if args.model is not None and not args.model.exists():
        raise ConfigError(f"--model {args.model}: no such artifact")
    setup_logging(args.log_json or config.daemon.log_json, config.daemon.log_level)
    if args.bundle is not None and not args.standalone and load_identity(state) is None:
        # A bundle named on the command line is checked now: a bad one is a clear error.
        read_verified_bundle(args.bundle, args.trust_key)
    state.root.mkdir(parents=True, exist_ok=True, mode=0o750)
    options = RunOptions(
        state,
        args.trust_key,
        args.bundle,
        args.boot_dir,
        model=args.model.resolve() if args.model else None,
        standalone=args.standalone,
    )
    # Until the fine-tune service listens for it (and while a restart builds a new one), a
    # job change told by `spoke finetune` must not end the daemon, as SIGUSR1 would.
    signal.signal(JOBS_CHANGED, signal.SIG_IGN)
    daemon = Daemon(options, config)

    async def watched(stop: asyncio.Event) -> int:
        async with LoopWatchdog(config.daemon.loop_stall_s):
            return await daemon.run(stop)

    return asyncio.run(run_until_signal(watched))
