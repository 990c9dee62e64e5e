"""The model store on the appliance: content-addressed, with atomic activation and rollback.

Layout under ``<state-dir>/models/``::

    store/<sha256>/        one verified model: the artifact files plus target.json (signed facts)
    downloads/<sha256>.part   a download in progress (resumed on the next attempt)
    current -> store/<sha256>    the active model (a symlink, swapped atomically)
    previous -> store/<sha256>   what ``rollback`` goes back to
    state.json             committed model, the activation journal (probation), refusals, hold
    tuf/                   the TUF metadata cache (see tufclient)

A store entry only ever appears complete: it is extracted into ``store/.tmp-*``, validated,
fsynced and renamed into place. Activation writes its intent to the journal, then points
``previous`` at the old model, then swaps ``current``; ``recover()`` on start finishes or undoes
whatever a power loss interrupted, so the appliance comes back with a verified model, old or
new, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write, file_lock, fsync_dir
from appliance.versions import version_key
from daemon.delivery.errors import ModelRefused
from daemon.delivery.journal import Journal, Refusal

log = logging.getLogger(__name__)

ARTIFACT_FILES = ("card.json", "model.onnx", "weights.safetensors")
META_FILE = "target.json"
FAULT_ENV = "SPOKE_FAULT_AT"


def crash_point(step: str) -> None:
    """Die like a power loss at ``step`` when ``$SPOKE_FAULT_AT`` names it (the kill -9 tests
    walk every step of activation with this; unset in production it does nothing)."""
    if os.environ.get(FAULT_ENV) == step:
        log.warning("fault injection: SIGKILL at %s", step)
        os.kill(os.getpid(), signal.SIGKILL)


class ModelStore:
    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = root
        self.entries_dir = root / "store"
        self.downloads = root / "downloads"
        self.current_link = root / "current"
        self.previous_link = root / "previous"
        self.state_path = root / "state.json"
        self.tuf_cache = root / "tuf"
        if create:
            root.mkdir(parents=True, exist_ok=True)
            self.entries_dir.mkdir(exist_ok=True)
            self.downloads.mkdir(exist_ok=True)

    # --- the journal ----------------------------------------------------------------------

    def journal(self) -> Journal:
        """The journal on disk; a missing or unreadable file is an empty journal."""
        try:
            return Journal.model_validate_json(self.state_path.read_bytes())
        except (OSError, ValueError):
            return Journal()

    def save(self, journal: Journal) -> None:
        atomic_write(self.state_path, journal.model_dump_json(indent=2))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time across processes (the daemon and ``spoke models``)."""
        with file_lock(self.root):
            yield

    @contextlib.contextmanager
    def editing(self) -> Iterator[Journal]:
        """Read, change and save the journal under the lock."""
        with self.locked():
            journal = self.journal()
            yield journal
            self.save(journal)

    # --- entries --------------------------------------------------------------------------

    def path(self, sha: str) -> Path:
        return self.entries_dir / sha

    def has(self, sha: str) -> bool:
        return (self.path(sha) / META_FILE).is_file()

    def meta(self, sha: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.path(sha) / META_FILE).read_text())
            return data
        except (OSError, ValueError):
            return None

    def entries(self) -> list[dict[str, Any]]:
        if not self.entries_dir.is_dir():
            return []
        found = [m for p in self.entries_dir.iterdir() if (m := self.meta(p.name)) is not None]
        return sorted(found, key=lambda m: version_key(str(m.get("version", "0"))))

    def by_version(self, version: str) -> dict[str, Any] | None:
        for meta in self.entries():
            if meta.get("version") == version:
                return meta
        return None

    def partial(self, sha: str) -> Path:
        return self.downloads / f"{sha}.part"

    def install(
        self, tar_path: Path, meta: dict[str, Any], validate: Callable[[Path], None]
    ) -> Path:
        """Extract a verified target into ``store/<sha256>/``: only the artifact's regular
        files, at most the signed length in total, validated by ``validate(dir)`` before the
        rename that makes it visible."""
        sha = str(meta["sha256"])
        dest = self.path(sha)
        if self.has(sha):
            return dest
        tmp = self.entries_dir / f".tmp-{sha[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _extract(tar_path, tmp, int(meta["length"]))
            crash_point("install-extracted")
            validate(tmp)
            atomic_write(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
            for name in ARTIFACT_FILES:
                with (tmp / name).open("rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(tmp, dest)
            fsync_dir(self.entries_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        crash_point("install-renamed")
        tar_path.unlink(missing_ok=True)
        return dest

    # --- links ----------------------------------------------------------------------------

    def _read_link(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except OSError:
            return None
        sha = Path(target).name
        return sha if self.has(sha) else None

    def current(self) -> str | None:
        return self._read_link(self.current_link)

    def previous(self) -> str | None:
        return self._read_link(self.previous_link)

    def _point(self, link: Path, sha: str | None) -> None:
        """Atomically make ``link`` point at ``store/<sha>`` (or remove it)."""
        if sha is None:
            link.unlink(missing_ok=True)
        else:
            tmp = link.with_name(f".{link.name}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(f"store/{sha}", tmp)
            os.replace(tmp, link)
        fsync_dir(self.root)

    def activate(self, sha: str, reason: str, probation: bool = True) -> str | None:
        """Make ``sha`` current, keeping the old current as ``previous``; returns the old one.

        With ``probation`` the journal records the activation until ``commit`` or ``rollback``.
        """
        if not self.has(sha):
            raise ModelRefused("not-in-store", f"{sha[:12]} is not in the store")
        old = self.current()
        journal = self.journal()
        journal.activate(sha, old, reason, time.time(), probation=probation)
        self.save(journal)
        crash_point("activate-journal")
        if old is not None and old != sha:
            self._point(self.previous_link, old)
        crash_point("activate-previous")
        self._point(self.current_link, sha)
        crash_point("activate-current")
        return old

    def commit(self, sha: str) -> None:
        journal = self.journal()
        journal.commit(sha, time.time())
        self.save(journal)
        crash_point("commit")

    def rollback(self, reason: str) -> str | None:
        """Point ``current`` back at ``previous`` (or at nothing); returns what is now current."""
        journal = self.journal()
        failed = self.current()
        back = journal.rollback_target(self.previous())
        back = back if back and self.has(back) else None
        self._point(self.current_link, back)
        crash_point("rollback-current")
        journal.rolled_back(failed, back, reason, time.time())
        self.save(journal)
        return back

    def recover(self) -> list[str]:
        """Finish or undo what a power loss interrupted; returns what it did, for the log."""
        did = []
        for leftover in self.entries_dir.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            did.append(f"removed unfinished entry {leftover.name}")
        for name in (".current.tmp", ".previous.tmp"):
            (self.root / name).unlink(missing_ok=True)
        journal = self.journal()
        probation = journal.probation
        current = self.current()
        if probation and probation.resume and current is not None and current == probation.sha256:
            # A clean stop during the health gate (SIGTERM, a restart): the gate starts over.
            journal.resume_probation()
            self.save(journal)
            did.append(f"health gate of {current[:12]} resumes after a clean stop")
        elif probation:
            if current is not None and current == probation.sha256:
                did.append(f"interrupted probation of {current[:12]}: rolled back")
                reason = "the daemon restarted before the health gate passed"
                back = self.rollback(reason)
                journal = self.journal()
                journal.refused = {**journal.refused, current: Refusal(
                    code="interrupted-probation", reason=reason, ts=time.time(),
                    version=(self.meta(current) or {}).get("version"), final=True)}
                self.save(journal)
                current = back
            else:
                journal.probation = None
                self.save(journal)
                did.append("activation interrupted before the swap: kept the old model")
        if self.current_link.is_symlink() and current is None:
            # Points at something that is not a complete entry: never serve it.
            committed = journal.committed
            fallback = committed if committed and self.has(committed) else None
            self._point(self.current_link, fallback)
            did.append(f"current pointed at an incomplete entry: now {fallback}")
        return did

    def gc(self, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` entries, never current, previous or committed."""
        protected = {self.current(), self.previous(), self.journal().committed}
        entries = self.entries()
        removable = [m for m in entries if m["sha256"] not in protected]
        excess = len(entries) - keep
        removed = []
        for meta in removable[: max(0, excess)]:
            shutil.rmtree(self.path(meta["sha256"]), ignore_errors=True)
            removed.append(str(meta["version"]))
        known = {m["sha256"] for m in self.entries()}
        for part in self.downloads.glob("*.part"):
            if part.stem in known:
                part.unlink(missing_ok=True)
        return removed


def _extract(tar_path: Path, dest: Path, limit: int) -> None:
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            names = sorted(m.name for m in members)
            if names != sorted(ARTIFACT_FILES) or any(not m.isfile() for m in members):
                raise ModelRefused(
                    "bad-artifact", f"the target must hold exactly {ARTIFACT_FILES}, not {names}"
                )
            if sum(m.size for m in members) > limit:
                raise ModelRefused("bad-artifact", "the tar's files exceed the signed length")
            for m in members:
                src = tar.extractfile(m)
                if src is None:
                    raise ModelRefused("bad-artifact", f"cannot read {m.name}")
                with src, (dest / m.name).open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError) as exc:
        raise ModelRefused("bad-artifact", f"unreadable tar: {exc}") from exc
