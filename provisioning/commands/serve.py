"""``spoke-hub serve``: run the hub (and its managed broker) until SIGTERM."""

import argparse
import asyncio
import logging

from appliance.config import HubConfig
from appliance.logs import setup_logging
from appliance.service import Service, Supervisor, run_until_signal
from provisioning.broker import AccessSync, ManagedBroker
from provisioning.commands.common import add_home, home_of
from provisioning.home import HubHome
from provisioning.hub import HubService
from provisioning.leader import Singleton, lock_for
from provisioning.registry import open_registry
from provisioning.rollout import RolloutService
from provisioning.sessions import SessionSweeper
from provisioning.web import HubWeb

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the hub and its managed mosquitto")
    add_home(p)
    p.add_argument("--broker", choices=["managed", "external"], help="override [broker] mode")
    p.add_argument("--broker-host", help="external broker host")
    p.add_argument("--broker-port", type=int, help="external broker port")
    p.add_argument("--broker-ca", help="CA certificate of the external broker")
    p.add_argument("--broker-cert", help="the hub's client certificate for the external broker")
    p.add_argument("--broker-key", help="the hub's client key for the external broker")
    p.add_argument("--log-json", action="store_true", help="log JSON lines")
    p.set_defaults(handler=run)


def _with_overrides(config: HubConfig, args: argparse.Namespace) -> HubConfig:
    broker = {
        "mode": args.broker,
        "host": args.broker_host,
        "port": args.broker_port,
        "ca": args.broker_ca,
        "cert": args.broker_cert,
        "key": args.broker_key,
    }
    changed = {k: v for k, v in broker.items() if v is not None}
    if not changed:
        return config
    return config.model_copy(update={"broker": config.broker.model_copy(update=changed)})


async def serve(home: HubHome, config: HubConfig, stop: asyncio.Event) -> int:
    registry = open_registry(home)
    try:
        async with Supervisor() as supervisor:
            if config.broker.mode == "managed":
                await supervisor.add(ManagedBroker(home, config, registry))
            hub = HubService(home, config, registry)
            await supervisor.add(hub)

            def singleton_work() -> list[Service]:
                sweeper = SessionSweeper(hub) if config.hub.instance else None
                access = AccessSync(home, registry)
                rollout = RolloutService(home, config, registry, hub)
                return [s for s in (sweeper, access, rollout) if s is not None]

            await supervisor.add(Singleton(lock_for(registry.engine), singleton_work))
            await supervisor.add(HubWeb(home, config, registry))
            log.info("hub running", extra={"home": str(home.root)})
            stopper = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(supervisor.failed.wait())
            await asyncio.wait({stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            failed.cancel()
            log.info("hub stopping")
        return 1 if supervisor.failure else 0
    finally:
        registry.close()


def run(args: argparse.Namespace) -> int:
    home = home_of(args)
    config = _with_overrides(home.load_config(), args)
    setup_logging(args.log_json or config.hub.log_json, config.hub.log_level)
    return asyncio.run(run_until_signal(lambda stop: serve(home, config, stop)))
