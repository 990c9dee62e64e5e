"""A software TPM 2.0 (swtpm) on loopback, one per "box", for the TPM-held key tests."""

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance import tpm
from tests.support.wait import wait_for

NEEDED = ("swtpm", *tpm.TOOLS)


def missing() -> list[str]:
    return [tool for tool in NEEDED if shutil.which(tool) is None]


def _free_port_pair() -> int:
    """A free port P with P + 1 free too: the swtpm TCTI talks to its control port at P + 1."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports for swtpm")


@dataclass(frozen=True)
class SoftTpm:
    port: int
    state: Path

    @property
    def tcti(self) -> str:
        """What ``[hub] tpm_device`` (and tpm2-tools) take to reach this TPM."""
        return f"swtpm:host=127.0.0.1,port={self.port}"


@contextmanager
def running(state: Path) -> Iterator[SoftTpm]:
    """A fresh TPM whose persistent state (its seeds: its identity) lives in ``state``."""
    state.mkdir(parents=True, exist_ok=True)
    port = _free_port_pair()
    ctrl = port + 1
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:

        def listens() -> bool:
            try:
                socket.create_connection(("127.0.0.1", ctrl), timeout=1).close()
                return True
            except OSError:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"swtpm did not start: {err}") from None
                return False

        wait_for(listens, 20, "swtpm's control port", 0.05)
        yield SoftTpm(port, state)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
