"""The device registry: claims (from bundles) and devices (from enrollments), in SQLite."""

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.store import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    max_uses INTEGER NOT NULL,
    cert_serial TEXT NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    claim_id TEXT NOT NULL REFERENCES claims(id),
    labels TEXT NOT NULL,
    facts TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    revoked_at REAL,
    availability TEXT NOT NULL DEFAULT 'never-seen',
    last_seen REAL,
    software_version TEXT,
    state TEXT
);
CREATE TABLE IF NOT EXISTS device_certs (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id),
    key_sha256 TEXT NOT NULL,
    not_after REAL NOT NULL,
    issued_at REAL NOT NULL,
    retired_at REAL
);
CREATE INDEX IF NOT EXISTS device_certs_by_device ON device_certs (device_id);
CREATE TABLE IF NOT EXISTS health (
    device_id TEXT NOT NULL REFERENCES devices(id),
    ts REAL NOT NULL,
    received_at REAL NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS health_by_device ON health (device_id, ts);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id),
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, ts);
CREATE TABLE IF NOT EXISTS operator_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS operator_sessions (
    sha256 TEXT PRIMARY KEY,
    token_id TEXT NOT NULL REFERENCES operator_tokens(id),
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_acks (
    event_id TEXT PRIMARY KEY REFERENCES events(id),
    operator TEXT NOT NULL,
    at REAL NOT NULL
);
"""

HEALTH_HISTORY = 360  # per device: an hour at a 10 s interval


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    id: str
    token_sha256: str
    labels: dict[str, str]
    created_at: float
    expires_at: float
    max_uses: int
    cert_serial: int
    revoked_at: float | None
    uses: int


@dataclass(frozen=True)
class Device:
    id: str
    claim_id: str
    labels: dict[str, str]
    facts: dict[str, Any]
    cert_serial: int
    enrolled_at: float
    revoked_at: float | None
    availability: str
    last_seen: float | None
    software_version: str | None
    state: dict[str, Any] | None
    #: The current certificate's end (epoch s); None for devices enrolled before it was kept.
    cert_not_after: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claim_id": self.claim_id,
            "labels": self.labels,
            "facts": self.facts,
            "enrolled_at": self.enrolled_at,
            "revoked": self.revoked_at is not None,
            "availability": "revoked" if self.revoked_at else self.availability,
            "last_seen": self.last_seen,
            "software_version": self.software_version,
            "state": self.state,
            "cert_not_after": self.cert_not_after,
        }


@dataclass(frozen=True)
class OperatorToken:
    """An operator credential for the hub's HTTPS API; the token itself is never stored."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.revoked_at is None,
        }


@dataclass(frozen=True)
class DeviceCert:
    """One certificate issued to a device (at enrollment or renewal)."""

    serial: int
    device_id: str
    key_sha256: str
    not_after: float
    issued_at: float
    retired_at: float | None


def _claim(row: sqlite3.Row) -> Claim:
    return Claim(
        id=row["id"],
        token_sha256=row["token_sha256"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        max_uses=row["max_uses"],
        cert_serial=int(row["cert_serial"]),
        revoked_at=row["revoked_at"],
        uses=row["uses"],
    )


def _device(row: sqlite3.Row) -> Device:
    return Device(
        id=row["id"],
        claim_id=row["claim_id"],
        labels=json.loads(row["labels"]),
        facts=json.loads(row["facts"]),
        cert_serial=int(row["cert_serial"]),
        enrolled_at=row["enrolled_at"],
        revoked_at=row["revoked_at"],
        availability=row["availability"],
        last_seen=row["last_seen"],
        software_version=row["software_version"],
        state=json.loads(row["state"]) if row["state"] else None,
        cert_not_after=row["cert_not_after"],
    )


# The devices' columns plus their current certificate's end.
DEVICE_SELECT = (
    "SELECT d.*, (SELECT c.not_after FROM device_certs c WHERE c.serial = d.cert_serial)"
    " AS cert_not_after FROM devices d"
)


class Registry:
    def __init__(self, path: Path) -> None:
        self.conn = connect(path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # --- claims ---------------------------------------------------------------------------

    def add_claim(
        self,
        claim_id: str,
        token: str,
        labels: dict[str, str],
        expires_at: float,
        max_uses: int,
        cert_serial: int,
    ) -> None:
        self.conn.execute(
            "INSERT INTO claims (id, token_sha256, labels, created_at, expires_at, max_uses,"
            " cert_serial) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                claim_id,
                token_hash(token),
                json.dumps(labels),
                time.time(),
                expires_at,
                max_uses,
                str(cert_serial),
            ),
        )

    def _claims(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Claim]:
        rows = self.conn.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM devices d WHERE d.claim_id = c.id) AS uses"
            f" FROM claims c {where} ORDER BY c.created_at",
            args,
        ).fetchall()
        return [_claim(r) for r in rows]

    def claim(self, claim_id: str) -> Claim | None:
        found = self._claims("WHERE c.id = ?", (claim_id,))
        return found[0] if found else None

    def claims(self) -> list[Claim]:
        return self._claims()

    def revoke_claim(self, claim_id: str) -> bool:
        cur = self.conn.execute(
            "UPDATE claims SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), claim_id),
        )
        return cur.rowcount == 1

    # --- devices --------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        claim_id: str,
        labels: dict[str, str],
        facts: dict[str, Any],
        cert_serial: int,
    ) -> None:
        """Record an enrollment; a repeated one (same key, so same id) re-issues in place."""
        self.conn.execute(
            "INSERT INTO devices (id, claim_id, labels, facts, cert_serial, enrolled_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET facts = excluded.facts,"
            " cert_serial = excluded.cert_serial",
            (
                device_id,
                claim_id,
                json.dumps(labels),
                json.dumps(facts),
                str(cert_serial),
                time.time(),
            ),
        )

    def device(self, device_id: str) -> Device | None:
        row = self.conn.execute(f"{DEVICE_SELECT} WHERE d.id = ?", (device_id,)).fetchone()
        return _device(row) if row else None

    def devices(self) -> list[Device]:
        rows = self.conn.execute(f"{DEVICE_SELECT} ORDER BY d.enrolled_at").fetchall()
        return [_device(r) for r in rows]

    # --- device certificates ----------------------------------------------------------------

    def add_cert(self, device_id: str, serial: int, key_sha256: str, not_after: float) -> None:
        """Record a certificate just issued and make it the device's current one."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO device_certs (serial, device_id, key_sha256, not_after, issued_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (str(serial), device_id, key_sha256, not_after, time.time()),
            )
            self.conn.execute(
                "UPDATE devices SET cert_serial = ? WHERE id = ?", (str(serial), device_id)
            )

    def device_cert(self, serial: int) -> DeviceCert | None:
        row = self.conn.execute(
            "SELECT * FROM device_certs WHERE serial = ?", (str(serial),)
        ).fetchone()
        if row is None:
            return None
        return DeviceCert(
            serial=int(row["serial"]),
            device_id=row["device_id"],
            key_sha256=row["key_sha256"],
            not_after=row["not_after"],
            issued_at=row["issued_at"],
            retired_at=row["retired_at"],
        )

    def retire_other_certs(self, device_id: str, serial: int) -> int:
        """Once a device has proven ``serial`` in use, its older certificates go on the CRL."""
        cur = self.conn.execute(
            "UPDATE device_certs SET retired_at = ? WHERE device_id = ? AND serial != ?"
            " AND retired_at IS NULL",
            (time.time(), device_id, str(serial)),
        )
        return cur.rowcount

    def revoke_device(self, device_id: str) -> bool:
        cur = self.conn.execute(
            "UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), device_id),
        )
        return cur.rowcount == 1

    def set_availability(self, device_id: str, availability: str) -> None:
        self.conn.execute(
            "UPDATE devices SET availability = ?, last_seen = ? WHERE id = ?",
            (availability, time.time(), device_id),
        )

    def set_state(self, device_id: str, state: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE devices SET state = ?, software_version = ?, last_seen = ? WHERE id = ?",
            (json.dumps(state), state.get("software_version"), time.time(), device_id),
        )

    def touch(self, device_id: str) -> None:
        self.conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (time.time(), device_id))

    # --- health and events --------------------------------------------------------------

    def add_health(self, device_id: str, ts: float, snapshot: dict[str, Any]) -> None:
        """Keep the latest snapshots of each device, at most HEALTH_HISTORY of them."""
        with self.conn:
            now = time.time()
            self.conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))
            self.conn.execute(
                "INSERT INTO health (device_id, ts, received_at, snapshot) VALUES (?, ?, ?, ?)",
                (device_id, ts, now, json.dumps(snapshot)),
            )
            self.conn.execute(
                "DELETE FROM health WHERE device_id = ? AND rowid NOT IN (SELECT rowid FROM"
                " health WHERE device_id = ? ORDER BY ts DESC LIMIT ?)",
                (device_id, device_id, HEALTH_HISTORY),
            )

    def latest_health(self, device_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT snapshot FROM health WHERE device_id = ? ORDER BY ts DESC LIMIT 1",
            (device_id,),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def health_history(self, device_id: str, limit: int = HEALTH_HISTORY) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT snapshot FROM health WHERE device_id = ? ORDER BY ts DESC LIMIT ?",
            (device_id, limit),
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def add_event(self, device_id: str, event: dict[str, Any]) -> bool:
        """Store an event once: a redelivery (same id) is ignored and returns False."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO events (id, device_id, kind, ts, data, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                event["id"],
                device_id,
                event["kind"],
                event["ts"],
                json.dumps(event["data"]),
                time.time(),
            ),
        )
        self.touch(device_id)
        return cur.rowcount == 1

    def events(
        self,
        device_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        before: float | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` (a ``ts``) pages back through older ones."""
        where: list[str] = []
        args: list[Any] = []
        if before is not None:
            where.append("ts < ?")
            args.append(before)
        if device_id:
            where.append("device_id = ?")
            args.append(device_id)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.conn.execute(
            f"SELECT * FROM events {clause} ORDER BY ts DESC, rowid DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [
            {
                "id": r["id"],
                "device_id": r["device_id"],
                "kind": r["kind"],
                "ts": r["ts"],
                "data": json.loads(r["data"]),
                "received_at": r["received_at"],
            }
            for r in rows
        ]

    # --- operator tokens and their browser sessions ----------------------------------------

    def add_operator_token(self, token_id: str, name: str, sha256: str) -> bool:
        """False when the name is taken (a revoked token keeps its name, for the audit trail)."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO operator_tokens (id, name, sha256, created_at)"
            " VALUES (?, ?, ?, ?)",
            (token_id, name, sha256, time.time()),
        )
        return cur.rowcount == 1

    def operator_tokens(self) -> list[OperatorToken]:
        rows = self.conn.execute(
            "SELECT id, name, created_at, revoked_at FROM operator_tokens ORDER BY created_at"
        ).fetchall()
        return [OperatorToken(r["id"], r["name"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke_operator_token(self, name_or_id: str) -> OperatorToken | None:
        with self.conn:
            self.conn.execute(
                "UPDATE operator_tokens SET revoked_at = COALESCE(revoked_at, ?)"
                " WHERE name = ? OR id = ?",
                (time.time(), name_or_id, name_or_id),
            )
            self.conn.execute(
                "DELETE FROM operator_sessions WHERE token_id IN"
                " (SELECT id FROM operator_tokens WHERE name = ? OR id = ?)",
                (name_or_id, name_or_id),
            )
        found = [t for t in self.operator_tokens() if name_or_id in (t.name, t.id)]
        return found[0] if found else None

    def active_operator(self, sha256: str) -> OperatorToken | None:
        row = self.conn.execute(
            "SELECT id, name, created_at, revoked_at FROM operator_tokens"
            " WHERE sha256 = ? AND revoked_at IS NULL",
            (sha256,),
        ).fetchone()
        return OperatorToken(row[0], row[1], row[2], row[3]) if row else None

    def add_operator_session(self, sha256: str, token_id: str, expires_at: float) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM operator_sessions WHERE expires_at < ?", (time.time(),))
            self.conn.execute(
                "INSERT INTO operator_sessions (sha256, token_id, expires_at) VALUES (?, ?, ?)",
                (sha256, token_id, expires_at),
            )

    def session_operator(self, sha256: str) -> OperatorToken | None:
        """The token behind a live session; None once it expired or its token was revoked."""
        row = self.conn.execute(
            "SELECT t.id, t.name, t.created_at, t.revoked_at FROM operator_sessions s"
            " JOIN operator_tokens t ON t.id = s.token_id"
            " WHERE s.sha256 = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
            (sha256, time.time()),
        ).fetchone()
        return OperatorToken(row[0], row[1], row[2], row[3]) if row else None

    def end_operator_session(self, sha256: str) -> None:
        self.conn.execute("DELETE FROM operator_sessions WHERE sha256 = ?", (sha256,))

    def acknowledge(self, event_id: str, operator: str) -> dict[str, Any] | None:
        """Record who acknowledged the alert event ``event_id`` and when; the first one stands.

        Returns the acknowledgement, or None when there is no alert event with that id."""
        row = self.conn.execute(
            "SELECT 1 FROM events WHERE id = ? AND kind = 'alert'", (event_id,)
        ).fetchone()
        if row is None:
            return None
        self.conn.execute(
            "INSERT OR IGNORE INTO alert_acks (event_id, operator, at) VALUES (?, ?, ?)",
            (event_id, operator, time.time()),
        )
        return self.acknowledgements([event_id])[event_id]

    def acknowledgements(self, event_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``{event_id: {"by": operator, "at": time}}`` for those of ``event_ids`` acknowledged."""
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(event_ids), 500):
            chunk = event_ids[i : i + 500]
            rows = self.conn.execute(
                "SELECT event_id, operator, at FROM alert_acks WHERE event_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            found |= {r[0]: {"by": r[1], "at": r[2]} for r in rows}
        return found

    def revoked_serials(self) -> list[int]:
        """What the CRL lists: revoked devices' and claims' certs, and retired (renewed) ones.

        Expired certificates fail the handshake anyway, so they leave the CRL and it stays small.
        """
        rows = self.conn.execute(
            "SELECT cert_serial FROM devices WHERE revoked_at IS NOT NULL"
            " UNION SELECT cert_serial FROM claims WHERE revoked_at IS NOT NULL"
            " UNION SELECT c.serial FROM device_certs c JOIN devices d ON d.id = c.device_id"
            " WHERE c.not_after > ? AND (c.retired_at IS NOT NULL OR d.revoked_at IS NOT NULL)",
            (time.time(),),
        ).fetchall()
        return [int(r[0]) for r in rows]
