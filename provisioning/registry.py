"""The device registry: claims (from bundles), devices (from enrollments), their health and
events, and operator tokens; on SQLAlchemy Core, so one implementation serves SQLite (the
embedded default, ``H/registry.db``) and PostgreSQL (several hub processes, one fleet).

Writes that come from MQTT may be replayed by the broker or arrive through another hub
process, so each is idempotent and ordered per device: a health report is stored once per
(device, taken-at) and an event once per id (``ON CONFLICT DO NOTHING``); a reported state
replaces the stored one only when its device sequence number is newer.
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from appliance.errors import LinkError
from provisioning import schema
from provisioning.home import HubHome
from provisioning.schema import (
    alert_acks,
    claims,
    device_certs,
    devices,
    events,
    health,
    hub_processes,
    operator_sessions,
    operator_tokens,
)

HEALTH_HISTORY = 360  # per device: an hour at a 10 s interval
T = TypeVar("T")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def engine_url(target: Path | str) -> str:
    """A SQLAlchemy URL: a path is a SQLite file; ``postgresql://`` uses psycopg 3."""
    if isinstance(target, Path):
        return f"sqlite:///{target}"
    if target.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + target.split("://", 1)[1]
    return target


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
class DeviceCert:
    """One certificate issued to a device (at enrollment or renewal)."""

    serial: int
    device_id: str
    key_sha256: str
    not_after: float
    issued_at: float
    retired_at: float | None


@dataclass(frozen=True)
class Enrolled:
    """What an accepted enrollment writes: the device and the certificate just issued to it."""

    device_id: str
    claim_id: str
    labels: dict[str, str]
    facts: dict[str, Any]
    serial: int
    key_sha256: str
    not_after: float


#: What an enrollment is decided on: the claim (with its uses), the device the CSR names if
#: it is enrolled already, and that device's current certificate.
EnrollmentRecords = tuple[Claim | None, Device | None, DeviceCert | None]


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


# The statements of the per-message path, built once (SQLAlchemy then reuses their compiled
# form): the hub runs them for every health report, state and event of the fleet.
# The devices' columns plus their current certificate's end.
_DEVICES = sa.select(
    devices,
    sa.select(device_certs.c.not_after)
    .where(device_certs.c.serial == devices.c.cert_serial)
    .scalar_subquery()
    .label("cert_not_after"),
)
_DEVICE = _DEVICES.where(devices.c.id == sa.bindparam("b_id"))
#: A new device's use of its claim, taken only while the claim has one left and is open.
_TAKE_USE = (
    claims.update()
    .where(
        claims.c.id == sa.bindparam("b_id"),
        claims.c.used < claims.c.max_uses,
        claims.c.revoked_at.is_(None),
        claims.c.expires_at > sa.bindparam("b_now"),
    )
    .values(used=claims.c.used + 1)
    .returning(claims.c.used)
)
_TOUCH = (
    devices.update()
    .where(devices.c.id == sa.bindparam("b_id"))
    .values(last_seen=sa.bindparam("b_now"))
)
_SET_AVAILABILITY = (
    devices.update()
    .where(devices.c.id == sa.bindparam("b_id"))
    .values(availability=sa.bindparam("b_value"), last_seen=sa.bindparam("b_now"))
)
_STATE_VALUES: dict[str, Any] = {
    "state": sa.bindparam("b_state"),
    "software_version": sa.bindparam("b_version"),
    "last_seen": sa.bindparam("b_now"),
}
# A state without a device sequence number (an older daemon) is stored as it comes.
_SET_STATE = (
    devices.update()
    .where(devices.c.id == sa.bindparam("b_id"))
    .values(_STATE_VALUES)
    .returning(devices.c.id)
)
_SET_NEWER_STATE = (
    devices.update()
    .where(
        devices.c.id == sa.bindparam("b_id"),
        sa.or_(devices.c.state_seq.is_(None), devices.c.state_seq < sa.bindparam("b_seq")),
    )
    .values({**_STATE_VALUES, "state_seq": sa.bindparam("b_seq")})
    .returning(devices.c.id)
)
# Each listed device keeps its newest HEALTH_HISTORY reports: one statement for a batch.
_RANKED_HEALTH = sa.select(
    health.c.device_id,
    health.c.ts,
    sa.func.row_number()
    .over(partition_by=health.c.device_id, order_by=health.c.ts.desc())
    .label("rank"),
).where(health.c.device_id.in_(sa.bindparam("b_ids", expanding=True))).subquery()
_TRIM_HEALTH = health.delete().where(
    sa.tuple_(health.c.device_id, health.c.ts).in_(
        sa.select(_RANKED_HEALTH.c.device_id, _RANKED_HEALTH.c.ts).where(
            _RANKED_HEALTH.c.rank > HEALTH_HISTORY
        )
    )
)
_TOUCH_ALL = (
    devices.update()
    .where(devices.c.id.in_(sa.bindparam("b_ids", expanding=True)))
    .values(last_seen=sa.bindparam("b_now"))
)
_ENROLLED = sa.select(devices.c.id).where(
    devices.c.id.in_(sa.bindparam("b_ids", expanding=True)), devices.c.revoked_at.is_(None)
)


@dataclass(frozen=True)
class HealthReport:
    """One health snapshot as a device sent it, already checked and serialized (JSON)."""

    device_id: str
    ts: float
    snapshot: str


class _Changed(Exception):
    """What an enrollment was decided on changed before it was recorded: decide again."""


def _claim(row: RowMapping) -> Claim:
    return Claim(
        id=row["id"],
        token_sha256=row["token_sha256"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        max_uses=row["max_uses"],
        cert_serial=int(row["cert_serial"]),
        revoked_at=row["revoked_at"],
        uses=row["used"],
    )


def _device(row: RowMapping) -> Device:
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


def _event(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "device_id": row["device_id"],
        "kind": row["kind"],
        "ts": row["ts"],
        "data": json.loads(row["data"]),
        "received_at": row["received_at"],
    }


def _operator(row: RowMapping) -> OperatorToken:
    return OperatorToken(row["id"], row["name"], row["created_at"], row["revoked_at"])


class Registry:
    def __init__(self, target: Path | str) -> None:
        self.engine: Engine = schema.connect(engine_url(target))
        self._add_health = (
            self._insert(health)
            .on_conflict_do_nothing(index_elements=[health.c.device_id, health.c.ts])
            .returning(health.c.ts)
        )
        self._add_event = (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=[events.c.id])
            .returning(events.c.id)
        )
        try:
            schema.migrate(self.engine)
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise LinkError(
                f"the registry at {where} is unreachable: {str(exc.orig).strip().splitlines()[0]}"
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        """INSERT with ``on_conflict_do_*`` in the dialect at hand (both spell it the same)."""
        return schema.dialect_insert(self.engine, table)

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
        with self._tx() as conn:
            conn.execute(
                claims.insert().values(
                    id=claim_id,
                    token_sha256=token_hash(token),
                    labels=json.dumps(labels),
                    created_at=time.time(),
                    expires_at=expires_at,
                    max_uses=max_uses,
                    cert_serial=str(cert_serial),
                )
            )

    def _claims(self, where: Any = None) -> list[Claim]:
        with self._tx() as conn:
            return self._read_claims(conn, where)

    @staticmethod
    def _read_claims(conn: Connection, where: Any = None) -> list[Claim]:
        query = claims.select().order_by(claims.c.created_at)
        if where is not None:
            query = query.where(where)
        return [_claim(r) for r in conn.execute(query).mappings()]

    def claim(self, claim_id: str) -> Claim | None:
        found = self._claims(claims.c.id == claim_id)
        return found[0] if found else None

    def claims(self) -> list[Claim]:
        return self._claims()

    def revoke_claim(self, claim_id: str) -> bool:
        return self._revoke(claims, claim_id)

    def _revoke(self, table: sa.Table, row_id: str) -> bool:
        """Mark a claim or device revoked now; False when it is unknown or already revoked."""
        with self._tx() as conn:
            result = conn.execute(
                table.update()
                .where(table.c.id == row_id, table.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
                .returning(table.c.id)
            ).first()
        return result is not None

    # --- devices --------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        claim_id: str,
        labels: dict[str, str],
        facts: dict[str, Any],
        cert_serial: int,
    ) -> None:
        """Record an enrollment without deciding it (the claim's rules are not checked); a
        repeated one (same key, so same id) re-issues in place and takes no use."""
        with self._tx() as conn:
            if self._insert_device(conn, device_id, claim_id, labels, facts, cert_serial):
                conn.execute(
                    claims.update().where(claims.c.id == claim_id).values(used=claims.c.used + 1)
                )
            else:
                self._reissue(conn, device_id, facts, cert_serial, only_unrevoked=False)

    def _insert_device(
        self,
        conn: Connection,
        device_id: str,
        claim_id: str,
        labels: dict[str, str],
        facts: dict[str, Any],
        cert_serial: int,
    ) -> bool:
        """Insert a new device; False when one of that id is there (a racing enrollment's,
        once that commits: PostgreSQL waits for it)."""
        insert = self._insert(devices).values(
            id=device_id,
            claim_id=claim_id,
            labels=json.dumps(labels),
            facts=json.dumps(facts),
            cert_serial=str(cert_serial),
            enrolled_at=time.time(),
        )
        inserted = conn.execute(
            insert.on_conflict_do_nothing(index_elements=[devices.c.id]).returning(devices.c.id)
        ).first()
        return inserted is not None

    @staticmethod
    def _reissue(
        conn: Connection, device_id: str, facts: dict[str, Any], cert_serial: int,
        only_unrevoked: bool = True,
    ) -> bool:
        update = devices.update().where(devices.c.id == device_id)
        if only_unrevoked:
            update = update.where(devices.c.revoked_at.is_(None))
        done = conn.execute(
            update.values(facts=json.dumps(facts), cert_serial=str(cert_serial))
            .returning(devices.c.id)
        ).first()
        return done is not None

    def enroll(
        self,
        claim_id: str,
        device_id: str | None,
        grant: Callable[[EnrollmentRecords], tuple[Enrolled, T]],
    ) -> T:
        """Decide an enrollment and record it in one transaction: ``grant`` gets the records
        it is decided on (read without locks), refuses (raising) or issues, and says what to
        write.

        Nothing is held while it decides. A new device takes its claim's use in the
        transaction's last statement, ``UPDATE claims SET used = used + 1 WHERE used <
        max_uses AND`` not revoked or expired, so the claim's row is locked only from there
        to the commit, and enrollments at once (threads, hub processes) never take a claim
        past ``max_uses``. When the rows it was decided on changed meanwhile (that statement
        matched nothing, the device was enrolled by a racing request, or revoked), the
        transaction is rolled back and the enrollment decided again on what is committed now:
        refused then with the reason, or (a racing request of the same device) granted again
        without a use. Each retry follows another transaction's commit, so it ends."""
        while True:
            try:
                with self._tx() as conn:
                    found = self._read_claims(conn, claims.c.id == claim_id)
                    existing = self._read_device(conn, device_id) if device_id else None
                    held = self._read_cert(conn, existing.cert_serial) if existing else None
                    enrolled, result = grant((found[0] if found else None, existing, held))
                    self._record(conn, enrolled, new=existing is None)
                return result
            except _Changed:
                continue

    def _record(self, conn: Connection, enrolled: Enrolled, new: bool) -> None:
        """Write a granted enrollment; raises _Changed when what it was decided on changed."""
        if new:
            recorded = self._insert_device(
                conn, enrolled.device_id, enrolled.claim_id, enrolled.labels, enrolled.facts,
                enrolled.serial,
            )
        else:
            recorded = self._reissue(conn, enrolled.device_id, enrolled.facts, enrolled.serial)
        if not recorded:
            raise _Changed
        self._insert_cert(
            conn, enrolled.device_id, enrolled.serial, enrolled.key_sha256, enrolled.not_after
        )
        if new:
            taken = conn.execute(
                _TAKE_USE, {"b_id": enrolled.claim_id, "b_now": time.time()}
            ).first()
            if taken is None:
                raise _Changed

    def device(self, device_id: str) -> Device | None:
        with self._tx() as conn:
            return self._read_device(conn, device_id)

    @staticmethod
    def _read_device(conn: Connection, device_id: str) -> Device | None:
        row = conn.execute(_DEVICE, {"b_id": device_id}).mappings().first()
        return _device(row) if row else None

    def devices(self) -> list[Device]:
        with self._tx() as conn:
            rows = conn.execute(_DEVICES.order_by(devices.c.enrolled_at)).mappings()
            return [_device(r) for r in rows]

    def revoke_device(self, device_id: str) -> bool:
        return self._revoke(devices, device_id)

    # --- device certificates ----------------------------------------------------------------

    def add_cert(self, device_id: str, serial: int, key_sha256: str, not_after: float) -> None:
        """Record a certificate just issued and make it the device's current one."""
        with self._tx() as conn:
            self._insert_cert(conn, device_id, serial, key_sha256, not_after)
            conn.execute(
                devices.update().where(devices.c.id == device_id).values(cert_serial=str(serial))
            )

    @staticmethod
    def _insert_cert(
        conn: Connection, device_id: str, serial: int, key_sha256: str, not_after: float
    ) -> None:
        conn.execute(
            device_certs.insert().values(
                serial=str(serial),
                device_id=device_id,
                key_sha256=key_sha256,
                not_after=not_after,
                issued_at=time.time(),
            )
        )

    def device_cert(self, serial: int) -> DeviceCert | None:
        with self._tx() as conn:
            return self._read_cert(conn, serial)

    @classmethod
    def _read_cert(cls, conn: Connection, serial: int) -> DeviceCert | None:
        found = cls._read_certs(conn, device_certs.c.serial == str(serial))
        return found[0] if found else None

    def certs_of(self, device_id: str) -> list[DeviceCert]:
        """Every certificate issued to ``device_id``, oldest first (renewals add one each)."""
        with self._tx() as conn:
            return self._read_certs(conn, device_certs.c.device_id == device_id)

    @staticmethod
    def _read_certs(conn: Connection, where: Any) -> list[DeviceCert]:
        query = device_certs.select().where(where).order_by(device_certs.c.issued_at)
        rows = conn.execute(query).mappings().all()
        return [DeviceCert(serial=int(row["serial"]), device_id=row["device_id"],
                           key_sha256=row["key_sha256"], not_after=row["not_after"],
                           issued_at=row["issued_at"], retired_at=row["retired_at"])
                for row in rows]

    def retire_other_certs(self, device_id: str, serial: int) -> int:
        """Once a device has proven ``serial`` in use, its older certificates go on the CRL."""
        with self._tx() as conn:
            retired = conn.execute(
                device_certs.update()
                .where(
                    device_certs.c.device_id == device_id,
                    device_certs.c.serial != str(serial),
                    device_certs.c.retired_at.is_(None),
                )
                .values(retired_at=time.time())
                .returning(device_certs.c.serial)
            ).all()
        return len(retired)

    def set_availability(self, device_id: str, availability: str) -> None:
        with self._tx() as conn:
            values = {"b_id": device_id, "b_value": availability, "b_now": time.time()}
            conn.execute(_SET_AVAILABILITY, values)

    def set_state(self, device_id: str, state: dict[str, Any], seq: int | None = None) -> bool:
        """Store a reported state unless a newer one (higher device ``seq``) is stored already.

        A state without ``seq`` (an older daemon) is stored as it comes. False when skipped.
        """
        values = {
            "b_id": device_id,
            "b_state": json.dumps(state),
            "b_seq": seq,
            "b_version": state.get("software_version"),
            "b_now": time.time(),
        }
        with self._tx() as conn:
            result = conn.execute(_SET_STATE if seq is None else _SET_NEWER_STATE, values)
            return result.first() is not None

    def touch(self, device_id: str) -> None:
        with self._tx() as conn:
            self._touch(conn, device_id)

    @staticmethod
    def _touch(conn: Connection, device_id: str) -> None:
        conn.execute(_TOUCH, {"b_id": device_id, "b_now": time.time()})

    # --- hub processes ----------------------------------------------------------------------

    def add_hub_process(self, instance: str) -> None:
        with self._tx() as conn:
            conn.execute(
                self._insert(hub_processes)
                .values(instance=instance, started_at=time.time())
                .on_conflict_do_nothing(index_elements=[hub_processes.c.instance])
            )

    def hub_processes(self) -> list[str]:
        with self._tx() as conn:
            return list(conn.execute(sa.select(hub_processes.c.instance)).scalars())

    def remove_hub_process(self, instance: str) -> None:
        with self._tx() as conn:
            conn.execute(hub_processes.delete().where(hub_processes.c.instance == instance))

    # --- health and events --------------------------------------------------------------

    def add_health(self, device_id: str, ts: float, snapshot: dict[str, Any]) -> bool:
        """Store one snapshot (see add_health_reports); False when it was not stored."""
        return bool(self.add_health_reports([HealthReport(device_id, ts, json.dumps(snapshot))]))

    def add_health_reports(self, reports: list[HealthReport]) -> int:
        """Store a batch of reports in one transaction and keep each device's newest
        HEALTH_HISTORY; returns how many were new. A report seen before (same device and
        taken-at time, also twice in one batch) is not stored again, and reports of devices
        that are not enrolled, or are revoked, are not stored at all."""
        if not reports:
            return 0
        ids = sorted({r.device_id for r in reports})
        now = time.time()
        with self._tx() as conn:
            enrolled = set(conn.execute(_ENROLLED, {"b_ids": ids}).scalars())
            # In key order, so two processes writing overlapping batches (a redelivery) take
            # their row locks in the same order and cannot deadlock.
            rows = [
                {"device_id": r.device_id, "ts": r.ts, "received_at": now, "snapshot": r.snapshot}
                for r in sorted(reports, key=lambda r: (r.device_id, r.ts))
                if r.device_id in enrolled
            ]
            if not rows:
                return 0
            stored = len(conn.execute(self._add_health, rows).all())
            seen = sorted(enrolled)
            conn.execute(_TOUCH_ALL, {"b_ids": seen, "b_now": now})
            conn.execute(_TRIM_HEALTH, {"b_ids": seen})
        return stored

    def latest_health(self, device_id: str) -> dict[str, Any] | None:
        found = self.health_history(device_id, 1)
        return found[0] if found else None

    def health_history(self, device_id: str, limit: int = HEALTH_HISTORY) -> list[dict[str, Any]]:
        query = (
            sa.select(health.c.snapshot)
            .where(health.c.device_id == device_id)
            .order_by(health.c.ts.desc())
            .limit(limit)
        )
        with self._tx() as conn:
            return [json.loads(s) for s in conn.execute(query).scalars()]

    def add_event(self, device_id: str, event: dict[str, Any]) -> bool:
        """Store an event once: a redelivery (same id) is ignored and returns False."""
        with self._tx() as conn:
            stored = conn.execute(
                self._add_event,
                {
                    "id": event["id"],
                    "device_id": device_id,
                    "kind": event["kind"],
                    "ts": event["ts"],
                    "data": json.dumps(event["data"]),
                    "received_at": time.time(),
                },
            ).first()
            self._touch(conn, device_id)
        return stored is not None

    def events(
        self,
        device_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        before: float | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` (a ``ts``) pages back through older ones."""
        query = sa.select(events).order_by(events.c.ts.desc(), events.c.received_at.desc())
        if before is not None:
            query = query.where(events.c.ts < before)
        if device_id:
            query = query.where(events.c.device_id == device_id)
        if kind:
            query = query.where(events.c.kind == kind)
        with self._tx() as conn:
            return [_event(r) for r in conn.execute(query.limit(limit)).mappings()]

    def recent_events_by_device(
        self, kind: str, per_device: int, device_ids: list[str] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Each device's newest ``per_device`` events of ``kind`` (newest first), in one query:
        what ``events(device, kind, per_device)`` gives, for the whole fleet at once."""
        rank = (
            sa.func.row_number()
            .over(partition_by=events.c.device_id,
                  order_by=(events.c.ts.desc(), events.c.received_at.desc()))
            .label("rank")
        )
        ranked = sa.select(events, rank).where(events.c.kind == kind)
        if device_ids is not None:
            ranked = ranked.where(events.c.device_id.in_(device_ids))
        inner = ranked.subquery()
        query = (
            sa.select(*(inner.c[c.name] for c in events.c))
            .where(inner.c.rank <= per_device)
            .order_by(inner.c.device_id, inner.c.rank)
        )
        found: dict[str, list[dict[str, Any]]] = {}
        with self._tx() as conn:
            for r in conn.execute(query).mappings():
                found.setdefault(r["device_id"], []).append(_event(r))
        return found

    def latest_health_of(self, device_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each listed device's newest health snapshot, one query per 500 devices (devices
        without one are left out)."""
        latest = health.alias("latest")
        newest = (
            sa.select(sa.func.max(latest.c.ts))
            .where(latest.c.device_id == health.c.device_id)
            .scalar_subquery()
        )
        found: dict[str, dict[str, Any]] = {}
        with self._tx() as conn:
            for i in range(0, len(device_ids), 500):
                query = sa.select(health.c.device_id, health.c.snapshot).where(
                    health.c.device_id.in_(device_ids[i : i + 500]), health.c.ts == newest
                )
                found |= {r.device_id: json.loads(r.snapshot) for r in conn.execute(query)}
        return found

    def acknowledge(self, event_id: str, operator: str) -> dict[str, Any] | None:
        """Record who acknowledged the alert event ``event_id`` and when; the first one stands.

        Returns the acknowledgement, or None when there is no alert event with that id."""
        alert = sa.select(events.c.id).where(events.c.id == event_id, events.c.kind == "alert")
        with self._tx() as conn:
            if conn.execute(alert).first() is None:
                return None
            conn.execute(
                self._insert(alert_acks)
                .values(event_id=event_id, operator=operator, at=time.time())
                .on_conflict_do_nothing(index_elements=[alert_acks.c.event_id])
            )
        return self.acknowledgements([event_id])[event_id]

    def acknowledgements(self, event_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``{event_id: {"by": operator, "at": time}}`` for those of ``event_ids`` acknowledged."""
        found: dict[str, dict[str, Any]] = {}
        with self._tx() as conn:
            for i in range(0, len(event_ids), 500):
                query = sa.select(alert_acks).where(
                    alert_acks.c.event_id.in_(event_ids[i : i + 500])
                )
                found |= {
                    r["event_id"]: {"by": r["operator"], "at": r["at"]}
                    for r in conn.execute(query).mappings()
                }
        return found

    def revoked_serials(self) -> list[int]:
        """What the CRL lists: revoked devices' certs, and retired (renewed) ones.

        A revoked claim stays off it: its ACL lets it only ask to enroll and hear the answer, so
        its holder learns "claim-revoked" instead of a bare TLS failure. Expired certificates
        fail the handshake anyway, so they leave the CRL and it stays small.
        """
        retired = (
            sa.select(device_certs.c.serial)
            .join(devices, devices.c.id == device_certs.c.device_id)
            .where(
                device_certs.c.not_after > time.time(),
                sa.or_(device_certs.c.retired_at.is_not(None), devices.c.revoked_at.is_not(None)),
            )
        )
        query = sa.union(
            sa.select(devices.c.cert_serial).where(devices.c.revoked_at.is_not(None)),
            retired,
        )
        with self._tx() as conn:
            return [int(s) for s in conn.execute(query).scalars()]

    # --- operator tokens and their browser sessions ----------------------------------------

    def add_operator_token(self, token_id: str, name: str, sha256: str) -> bool:
        """False when the name is taken (a revoked token keeps its name, for the audit trail)."""
        with self._tx() as conn:
            result = conn.execute(
                self._insert(operator_tokens)
                .values(id=token_id, name=name, sha256=sha256, created_at=time.time())
                .on_conflict_do_nothing(index_elements=[operator_tokens.c.name])
                .returning(operator_tokens.c.id)
            ).first()
        return result is not None

    def operator_tokens(self) -> list[OperatorToken]:
        with self._tx() as conn:
            rows = conn.execute(operator_tokens.select().order_by(operator_tokens.c.created_at))
            return [_operator(r) for r in rows.mappings()]

    def revoke_operator_token(self, name_or_id: str) -> OperatorToken | None:
        which = sa.or_(operator_tokens.c.name == name_or_id, operator_tokens.c.id == name_or_id)
        with self._tx() as conn:
            conn.execute(
                operator_tokens.update()
                .where(which, operator_tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            conn.execute(
                operator_sessions.delete().where(
                    operator_sessions.c.token_id.in_(sa.select(operator_tokens.c.id).where(which))
                )
            )
            row = conn.execute(operator_tokens.select().where(which)).mappings().first()
        return _operator(row) if row else None

    def active_operator(self, sha256: str) -> OperatorToken | None:
        query = operator_tokens.select().where(
            operator_tokens.c.sha256 == sha256, operator_tokens.c.revoked_at.is_(None)
        )
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
        return _operator(row) if row else None

    def add_operator_session(self, sha256: str, token_id: str, expires_at: float) -> None:
        with self._tx() as conn:
            expired = operator_sessions.c.expires_at < time.time()
            conn.execute(operator_sessions.delete().where(expired))
            conn.execute(
                operator_sessions.insert().values(
                    sha256=sha256, token_id=token_id, expires_at=expires_at
                )
            )

    def session_operator(self, sha256: str) -> OperatorToken | None:
        """The token behind a live session; None once it expired or its token was revoked."""
        query = (
            sa.select(operator_tokens)
            .join(operator_sessions, operator_sessions.c.token_id == operator_tokens.c.id)
            .where(
                operator_sessions.c.sha256 == sha256,
                operator_sessions.c.expires_at > time.time(),
                operator_tokens.c.revoked_at.is_(None),
            )
        )
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
        return _operator(row) if row else None

    def end_operator_session(self, sha256: str) -> None:
        with self._tx() as conn:
            conn.execute(operator_sessions.delete().where(operator_sessions.c.sha256 == sha256))


def open_registry(home: HubHome) -> Registry:
    """The registry ``[registry] url`` names (or ``SPOKE_HUB_REGISTRY__URL``), else SQLite in
    the hub's home."""
    url = home.load_config().registry.url
    return Registry(url or home.registry)
