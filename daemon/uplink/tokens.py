"""Bearer tokens for uplink clients, stored hashed in SQLite (``STATE/uplink/tokens.db``).

A token is ``spk_`` + 32 random bytes (URL-safe base64); only its sha256 is stored, so a copy
of the state directory does not give API access. A token has 256 bits of entropy, so a plain
(unsalted) hash is enough and lets a request be checked with one indexed lookup. The daemon
reads the table on every request: ``spoke tokens revoke`` takes effect at once, no restart.
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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    created_at: float
    revoked_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "active": self.revoked_at is None}


class TokenStore:
    def __init__(self, path: Path) -> None:
        self._conn: sqlite3.Connection = connect(path)
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def create(self, name: str) -> tuple[TokenInfo, str]:
        """A new token for ``name``; the token itself is returned once and never stored."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ConfigError("a token name must be 1 to 64 characters")
        token = PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(uuid.uuid4().hex[:12], name, time.time(), None)
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT INTO tokens (id, name, sha256, created_at) VALUES (?, ?, ?, ?)",
                    (info.id, info.name, token_hash(token), info.created_at),
                )
        except sqlite3.IntegrityError as exc:
            raise ConfigError(f"a token named {name!r} exists already; revoke it or pick "
                              "another name") from exc
        return info, token

    def all(self) -> list[TokenInfo]:
        rows = self._conn.execute(
            "SELECT id, name, created_at, revoked_at FROM tokens ORDER BY created_at").fetchall()
        return [TokenInfo(r["id"], r["name"], r["created_at"], r["revoked_at"]) for r in rows]

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
        """The name of the active token ``token``, or None."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        row = self._conn.execute(
            "SELECT name FROM tokens WHERE sha256 = ? AND revoked_at IS NULL", (token_hash(token),)
        ).fetchone()
        return None if row is None else str(row["name"])
