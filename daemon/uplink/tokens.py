"""Bearer tokens for uplink clients, stored hashed in SQLite (``STATE/uplink/tokens.db``).

A token is ``spk_`` + 32 random bytes (URL-safe base64); only its sha256 is stored, so a copy
of the state directory does not give API access. A token has 256 bits of entropy, so a plain
(unsalted) hash is enough and lets a request be checked with one indexed lookup. The daemon
reads the table on every request: ``spoke tokens revoke`` takes effect at once, no restart.

A token may end (``expires_at``, ``spoke tokens create --expires 30d``), and a token offered
for pairing may be *withdrawn unless used* (``unused_until``): it stops working at that time
if nothing has used it by then; its first use (``first_used_at``) lifts that limit.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError
from appliance.store import connect

PREFIX = "spk_"
MAX_TOKEN_CHARS = 128

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
# Columns added after the first release: added in place to an existing table.
ADDED_COLUMNS = {"expires_at": "REAL", "unused_until": "REAL", "first_used_at": "REAL"}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    expires_at: float | None = None
    unused_until: float | None = None
    first_used_at: float | None = None

    def state(self, now: float | None = None) -> str:
        """``active``, ``revoked``, ``expired`` or ``withdrawn`` (an offer that went unused)."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.first_used_at is None and self.unused_until is not None \
                and now >= self.unused_until:
            return "withdrawn"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        state = self.state()
        return {"id": self.id, "name": self.name, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "expires_at": self.expires_at,
                "first_used_at": self.first_used_at, "state": state,
                "active": state == "active"}


def _info(row: sqlite3.Row) -> TokenInfo:
    return TokenInfo(row["id"], row["name"], row["created_at"], row["revoked_at"],
                     row["expires_at"], row["unused_until"], row["first_used_at"])


class TokenStore:
    def __init__(self, path: Path) -> None:
        self._conn: sqlite3.Connection = connect(path)
        self._conn.executescript(SCHEMA)
        have = {r["name"] for r in self._conn.execute("PRAGMA table_info(tokens)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self._conn.execute(f"ALTER TABLE tokens ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._conn.close()

    def create(
        self, name: str, expires_in_s: float | None = None, unused_until: float | None = None
    ) -> tuple[TokenInfo, str]:
        """A new token for ``name``; the token itself is returned once and never stored.

        ``expires_in_s``: it ends that long from now. ``unused_until``: it is withdrawn at
        that time unless something used it before (a pairing offer).
        """
        name = name.strip()
        if not name or len(name) > 64:
            raise ConfigError("a token name must be 1 to 64 characters")
        if expires_in_s is not None and expires_in_s <= 0:
            raise ConfigError("a token's lifetime must be more than 0, e.g. --expires 30d")
        token = PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        info = TokenInfo(
            uuid.uuid4().hex[:12], name, now, None,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            unused_until=unused_until,
        )
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT INTO tokens (id, name, sha256, created_at, expires_at, unused_until)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (info.id, info.name, token_hash(token), info.created_at, info.expires_at,
                     info.unused_until),
                )
        except sqlite3.IntegrityError as exc:
            raise ConfigError(f"a token named {name!r} exists already; revoke it or pick "
                              "another name") from exc
        return info, token

    def all(self) -> list[TokenInfo]:
        rows = self._conn.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        return [_info(r) for r in rows]

    def revoke(self, name_or_id: str) -> TokenInfo:
        with self._conn:
            row = self._conn.execute(
                "SELECT id FROM tokens WHERE name = ? OR id = ?", (name_or_id, name_or_id)
            ).fetchone()
            if row is None:
                raise ConfigError(f"no token named {name_or_id!r}; see `spoke tokens list`")
            self._conn.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (time.time(), row["id"]),
            )
        return next(t for t in self.all() if t.id == row["id"])

    def verify(self, token: str) -> str | None:
        """The name of the active token ``token``, or None. Its first use is recorded."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        row = self._conn.execute(
            "SELECT * FROM tokens WHERE sha256 = ?", (token_hash(token),)
        ).fetchone()
        if row is None:
            return None
        info = _info(row)
        now = time.time()
        if info.state(now) != "active":
            return None
        if info.first_used_at is None:
            with self._conn:
                self._conn.execute(
                    "UPDATE tokens SET first_used_at = ? WHERE id = ? AND first_used_at IS NULL",
                    (now, info.id),
                )
        return info.name
