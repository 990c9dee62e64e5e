"""Several hub processes on one fleet, for tests and benchmarks: one hub home whose registry is
a PostgreSQL database, a real mosquitto started from the hub's own config (the hubs use it as
an external broker), and ``spoke-hub serve`` processes started at will."""

import sys
from pathlib import Path

from provisioning import broker
from provisioning.home import HubHome
from provisioning.registry import open_registry
from tests.support.fleet import Hub, Process, free_port, wait_for

#: What a hub process logs when it takes the singleton work over.
LEADS = "this hub process now runs the singleton work"


class HubFleet:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.hub = Hub(root)
        self.home = HubHome(self.hub.home)
        with self.home.config.open("a") as f:
            f.write(f'\n[registry]\nurl = "{url}"\n')
        config = self.home.load_config()
        self.home.broker_dir.mkdir(parents=True, exist_ok=True)
        self.home.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.home.broker_dir / "mosquitto.conf"
        conf.write_text(broker.render_config(self.home, config))
        registry = open_registry(self.home)
        (self.home.broker_dir / "acl").write_text(broker.render_acl(registry))
        registry.close()
        self.broker = Process(
            [broker.find_mosquitto("mosquitto"), "-c", str(conf)], root / "mosquitto.log"
        )
        # The singleton's ACL/CRL updates signal the broker through this file.
        (self.home.run_dir / "mosquitto.pid").write_text(str(self.broker.proc.pid))
        self.hubs: list[Process] = []

    def start_hub(self, name: str) -> Process:
        env = {"SPOKE_HUB_HUB__HTTP_PORT": str(free_port()), "SPOKE_HUB_HUB__INSTANCE": name}
        argv = [sys.executable, "-m", "provisioning", "serve", "--home", str(self.home.root),
                "--broker", "external", "--broker-host", "127.0.0.1"]
        process = Process(argv, self.root / f"{name}.log", env=env)
        self.hubs.append(process)
        wait_for(lambda: "hub connected to broker" in process.output(), 60, f"{name} to connect")
        return process

    def close(self) -> None:
        for p in self.hubs:
            p.kill()
        self.broker.kill()
