"""The registry's one schema, and the migrations that bring any database to it.

Migrations run once, whichever hub process (or ``spoke-hub`` command) opens the database
first: under a PostgreSQL advisory lock, or an exclusive file lock beside a SQLite file, the
applied versions are read and only the missing ones run, each recorded in
``schema_migrations``. A database made by an older hub (the pre-SQLAlchemy SQLite schema)
is brought forward in place, keeping its rows.
"""

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

#: Key of the advisory lock migrations take; singleton work uses others (provisioning.leader).
MIGRATION_LOCK = 0x5B0CE001

metadata = sa.MetaData()

claims = sa.Table(
    "claims",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("token_sha256", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("max_uses", sa.Integer, nullable=False),
    sa.Column("cert_serial", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Float),
    # Devices enrolled with the claim: taken one at a time by an enrollment's last statement,
    # never past max_uses (provisioning.registry.Registry.enroll).
    sa.Column("used", sa.Integer, nullable=False, server_default="0"),
)
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("claim_id", sa.Text, sa.ForeignKey("claims.id"), nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("facts", sa.Text, nullable=False),
    sa.Column("cert_serial", sa.Text, nullable=False),
    sa.Column("enrolled_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("availability", sa.Text, nullable=False, server_default="never-seen"),
    sa.Column("last_seen", sa.Float),
    sa.Column("software_version", sa.Text),
    sa.Column("state", sa.Text),
    # The device's sequence number of the stored state: an older one never replaces it.
    sa.Column("state_seq", sa.BigInteger),
)
# Every certificate issued to a device (enrollment and renewal); the CRL lists retired ones.
device_certs = sa.Table(
    "device_certs",
    metadata,
    sa.Column("serial", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.id"), nullable=False),
    sa.Column("key_sha256", sa.Text, nullable=False),
    sa.Column("not_after", sa.Float, nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("retired_at", sa.Float),
    sa.Index("device_certs_by_device", "device_id"),
)
health = sa.Table(
    "health",
    metadata,
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.id"), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("snapshot", sa.Text, nullable=False),
    # One report per device and taken-at time: a replay is not stored twice.
    sa.Index("health_once", "device_id", "ts", unique=True),
)
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Index("events_by_device", "device_id", "ts"),
)
# Who acknowledged an alert event, and when (the first acknowledgement stands).
alert_acks = sa.Table(
    "alert_acks",
    metadata,
    sa.Column("event_id", sa.Text, sa.ForeignKey("events.id"), primary_key=True),
    sa.Column("operator", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)
operator_tokens = sa.Table(
    "operator_tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("sha256", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)
operator_sessions = sa.Table(
    "operator_sessions",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("token_id", sa.Text, sa.ForeignKey("operator_tokens.id"), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
#: The named hub processes ([hub] instance) that have served this fleet, so the singleton can
#: end the MQTT session of one that stopped (provisioning.sessions).
hub_processes = sa.Table(
    "hub_processes",
    metadata,
    sa.Column("instance", sa.Text, primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
)
schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)


def _baseline(conn: Connection) -> None:
    """Every table that is missing (all of them in a new database)."""
    metadata.create_all(conn, checkfirst=True)


def _from_first_sqlite_schema(conn: Connection) -> None:
    """A registry from before SQLAlchemy: add the state sequence and make health unique."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("devices")}
    if "state_seq" not in columns:
        conn.execute(sa.text("ALTER TABLE devices ADD COLUMN state_seq BIGINT"))
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("health")}
    if "health_once" not in indexes:
        conn.execute(
            sa.text(
                "DELETE FROM health WHERE rowid NOT IN"
                " (SELECT MIN(rowid) FROM health GROUP BY device_id, ts)"
            )
            if conn.dialect.name == "sqlite"
            else sa.text(
                "DELETE FROM health a USING health b WHERE a.ctid > b.ctid"
                " AND a.device_id = b.device_id AND a.ts = b.ts"
            )
        )
        conn.execute(sa.text("DROP INDEX IF EXISTS health_by_device"))
        conn.execute(sa.text("CREATE UNIQUE INDEX health_once ON health (device_id, ts)"))


def _hub_processes(conn: Connection) -> None:
    hub_processes.create(conn, checkfirst=True)


def _claim_uses(conn: Connection) -> None:
    """A claim's uses, counted from its devices once and kept in its row from then on."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("claims")}
    if "used" not in columns:
        conn.execute(sa.text("ALTER TABLE claims ADD COLUMN used INTEGER NOT NULL DEFAULT 0"))
    count = (
        sa.select(sa.func.count())
        .where(devices.c.claim_id == claims.c.id)
        .scalar_subquery()
    )
    conn.execute(claims.update().values(used=count))


MIGRATIONS: list[Callable[[Connection], None]] = [
    _baseline,
    _from_first_sqlite_schema,
    _hub_processes,
    _claim_uses,
]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def connect(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def dialect_insert(engine: Engine, table: sa.Table) -> Any:
    """An INSERT that knows ``on_conflict_do_nothing/_update`` for this engine's database."""
    return (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(table)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            yield conn
        return
    lock_path = Path(f"{engine.url.database}.migrate.lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def applied(conn: Connection) -> set[int]:
    if not sa.inspect(conn).has_table("schema_migrations"):
        return set()
    return set(conn.execute(sa.select(schema_migrations.c.version)).scalars())


def migrate(engine: Engine) -> list[int]:
    """Apply the missing migrations, once, under the lock; returns the versions applied now."""
    with _migration_lock(engine) as conn:
        done = applied(conn)
        ran = []
        for version, step in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            step(conn)
            conn.execute(schema_migrations.insert().values(version=version, applied_at=time.time()))
            ran.append(version)
        return ran
