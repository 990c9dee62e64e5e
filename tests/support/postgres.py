"""A throw-away PostgreSQL cluster for tests: initdb + pg_ctl under a temp dir, on a free port.

Never the system service: each cluster is private to the test run, listens on loopback only,
trusts local connections, and is stopped and deleted afterwards.
"""

import getpass
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.fleet import free_port


def pg_bin(tool: str) -> str | None:
    """``initdb``/``pg_ctl`` from PATH, else from Debian's versioned directory."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return versions[-1] if versions else None


def available() -> bool:
    return pg_bin("initdb") is not None and pg_bin("pg_ctl") is not None


@dataclass(frozen=True)
class Cluster:
    port: int
    datadir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{getpass.getuser()}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres_user() -> list[str]:
    """initdb refuses to run as root: run the server tools as the unprivileged 'nobody'."""
    return ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A running cluster in its own temp dir (not under pytest's: that one is root-only)."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    assert initdb and pg_ctl, "PostgreSQL is not installed (scripts/setup.sh installs it)"
    root = Path(tempfile.mkdtemp(prefix="spoke-pg-"))
    datadir, sockets = root / "pgdata", root / "pgsock"
    sockets.mkdir()
    user = _as_postgres_user()
    if user:
        shutil.chown(root, "nobody")
        shutil.chown(sockets, "nobody")
    superuser = getpass.getuser()
    subprocess.run(
        [*user, initdb, "-D", str(datadir), "-U", superuser, "--auth=trust", "-E", "UTF8",
         "--no-sync"],
        check=True, capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*user, pg_ctl, "-D", str(datadir), "-o", options, "-l", str(root / "pg.log"), "-w",
         "start"],
        check=True, capture_output=True,
    )
    try:
        yield Cluster(port, datadir)
    finally:
        subprocess.run(
            [*user, pg_ctl, "-D", str(datadir), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
