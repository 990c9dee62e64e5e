"""``make demo``: a local hub with its managed broker and appliances that provision themselves.

It runs real processes on loopback in a temporary directory and shows each step. With
``--exit`` (or SPOKE_DEMO_EXIT=1) it ends by itself; otherwise it stays up until Ctrl-C.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APPLIANCES = 2


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(module: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: `{module} {' '.join(args)}` failed:\n{proc.stderr}")
    return proc.stdout


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise SystemExit(f"demo: timed out waiting for {what}")


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "hub"
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        self.procs.append(proc)
        return proc

    def devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(
            tool("provisioning", "devices", "--home", str(self.home), "--json")
        )
        return result

    def run(self) -> None:
        mqtt_port, http_port = free_port(), free_port()
        step(f"Creating a hub home in {self.home}")
        print(
            tool(
                "provisioning",
                "init",
                "--home",
                str(self.home),
                "--public-host",
                "localhost",
                "--mqtt-port",
                str(mqtt_port),
                "--http-port",
                str(http_port),
            ),
            end="",
        )
        trust = self.root / "provisioning.pub"
        trust.write_text(tool("provisioning", "bundle", "pubkey", "--home", str(self.home)))

        step(f"Starting the hub and its managed mosquitto (mTLS on port {mqtt_port})")
        self.spawn("hub", "provisioning", "serve", "--home", str(self.home))
        wait_until(
            lambda: "hub connected to broker" in (self.root / "hub.log").read_text(), 30, "the hub"
        )

        step("Creating a signed provisioning bundle for site bridge-17")
        bundle = self.root / "bridge-17.spoke"
        print(
            tool(
                "provisioning",
                "bundle",
                "create",
                "--home",
                str(self.home),
                "--labels",
                "site=bridge-17,region=north",
                "--max-uses",
                "5",
                "--out",
                str(bundle),
            ),
            end="",
        )

        step(f"Plugging in {APPLIANCES} appliances: each finds the bundle and enrolls itself")
        for i in range(APPLIANCES):
            state = self.root / f"appliance-{i}"
            state.mkdir()
            # The bundle sits where a technician's USB stick would put it.
            (state / "bundle.spoke").write_bytes(bundle.read_bytes())
            self.spawn(
                f"appliance-{i}",
                "daemon",
                "run",
                "--state-dir",
                str(state),
                "--trust-key",
                str(trust),
                "--boot-dir",
                str(self.root / "boot"),
            )
        wait_until(
            lambda: sum(d["availability"] == "online" for d in self.devices()) == APPLIANCES,
            60,
            "the appliances to come online",
        )

        step("The fleet as the hub sees it (spoke-hub devices)")
        print(tool("provisioning", "devices", "--home", str(self.home)), end="")
        step("One appliance's own view (spoke status)")
        print(tool("daemon", "status", "--state-dir", str(self.root / "appliance-0")), end="")

    def stop(self) -> None:
        step("Shutting down: appliances first (they report 'stopped'), then the hub")
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        codes = [p.returncode for p in self.procs]
        print(f"exit codes: {codes}")
        if any(codes):
            raise SystemExit("demo: a process did not stop cleanly; logs are in " + str(self.root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit", action="store_true", help="end by itself (for CI)")
    args = parser.parse_args()
    auto_exit = args.exit or os.environ.get("SPOKE_DEMO_EXIT") == "1"
    with tempfile.TemporaryDirectory(prefix="spoke-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            demo.run()
            if not auto_exit:
                step("Running. Logs are in " + tmp + ". Press Ctrl-C to stop.")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
        finally:
            demo.stop()
    step("Done")


if __name__ == "__main__":
    main()
