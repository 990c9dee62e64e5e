"""The model journal: what the appliance is asked for, serves, tests, holds and refuses.

A pure state machine (DESIGN rule 4, in the manner of python-tuf's ``TrustedMetadataSet``): no
files, no clock of its own. Every transition takes the time from its caller, so tests drive it
without sleeping. ``ModelStore`` reads and writes it as ``state.json`` and moves the symlinks;
``ModelService`` is the I/O shell that downloads, verifies and serves.

The life of a model on the appliance::

    desired --(download, verify, smoke test)--> installed --(activate)--> probation
    probation --(health gate passes)--> committed
    probation --(gate fails, or a crash mid-gate)--> rolled back (refused for good)
    any refusal --> last_error (and ``refused[sha]`` when it is final)
    an operator's or a fine-tune's choice --> held until the hub desires something new
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from appliance.delivery import DesiredModel, DesiredState

#: How many journal events are kept (the newest).
HISTORY_LIMIT = 50


class Phase(StrEnum):
    """What the reported state says about the active model."""

    NONE = "none"
    PROBATION = "probation"
    COMMITTED = "committed"


class Probation(BaseModel):
    """An activated model that has not yet passed its health gate."""

    sha256: str
    previous: str | None = None
    since: float
    reason: str
    #: Set by a clean stop mid-gate: the next start resumes the gate instead of rolling back.
    resume: bool = False


class Refusal(BaseModel):
    """Why a model was not activated, or was rolled back."""

    code: str
    reason: str
    name: str | None = None
    version: str | None = None
    target: str | None = None
    sha256: str | None = None
    active: str | None = None
    ts: float
    final: bool = False
    #: The desired model this refusal answered; a final refusal stands until the hub desires
    #: something else.
    desired: DesiredModel | None = None

    def same_failure(self, other: Refusal | None) -> bool:
        """A retry that failed the same way (not news for the hub's event log)."""
        return other is not None and (self.code, self.version, self.sha256) == (
            other.code, other.version, other.sha256)


class Hold(BaseModel):
    """A model chosen on the appliance (operator or fine-tune) that the hub's current desired
    state must not override."""

    desired: DesiredState | None = None
    sha256: str | None = None
    action: str
    ts: float


class Event(BaseModel):
    """One line of the journal's history."""

    model_config = ConfigDict(extra="allow")
    ts: float
    event: str


class Journal(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    committed: str | None = None
    probation: Probation | None = None
    desired: DesiredState | None = None
    refused: dict[str, Refusal] = Field(default_factory=dict)
    hold: Hold | None = None
    last_error: Refusal | None = None
    history: list[Event] = Field(default_factory=list)

    # --- questions ----------------------------------------------------------------------------

    @property
    def desired_model(self) -> DesiredModel | None:
        return self.desired.model if self.desired is not None else None

    def held(self) -> bool:
        """An operator's or fine-tune's choice stands against the current desired state."""
        return self.hold is not None and self.hold.desired == self.desired

    def refused_for_good(self, sha: str, desired: DesiredModel) -> bool:
        prior = self.refused.get(sha)
        return prior is not None and prior.final and prior.desired == desired

    def phase(self, serving: bool) -> Phase:
        if not serving:
            return Phase.NONE
        return Phase.PROBATION if self.probation is not None else Phase.COMMITTED

    # --- transitions ----------------------------------------------------------------------

    def note(self, event: str, now: float, **fields: Any) -> None:
        self.history = [*self.history, Event(ts=now, event=event, **fields)][-HISTORY_LIMIT:]

    def desire(self, desired: DesiredState) -> bool:
        """The hub's desired state arrived; returns whether it changed. A hold ends when the
        hub desires something new."""
        if self.desired == desired:
            return False
        self.desired = desired
        if self.hold is not None and self.hold.desired != desired:
            self.hold = None
        return True

    def hold_at(self, sha: str, action: str, now: float) -> None:
        self.hold = Hold(desired=self.desired, sha256=sha, action=action, ts=now)

    def activate(self, sha: str, previous: str | None, reason: str, now: float,
                 probation: bool = True) -> None:
        """``sha`` becomes current: on probation until its gate decides, or committed at once
        (an operator's explicit choice)."""
        if probation:
            self.probation = Probation(sha256=sha, previous=previous, since=now, reason=reason)
        else:
            self.probation = None
            self.committed = sha
        self.note("activate", now, sha256=sha, previous=previous, reason=reason)

    def commit(self, sha: str, now: float) -> None:
        self.committed = sha
        self.probation = None
        self.last_error = None
        self.note("commit", now, sha256=sha)

    def rollback_target(self, previous_link: str | None) -> str | None:
        """Where a rollback goes: the model the probation replaced, else ``previous``."""
        if self.probation is not None:
            return self.probation.previous
        return previous_link

    def rolled_back(self, failed: str | None, to: str | None, reason: str, now: float) -> None:
        self.probation = None
        if to is not None:
            self.committed = to
        self.note("rollback", now, failed=failed, to=to, reason=reason)

    def pause_probation(self) -> None:
        """A clean stop mid-gate: the next start resumes the gate."""
        if self.probation is not None:
            self.probation = self.probation.model_copy(update={"resume": True})

    def resume_probation(self) -> None:
        if self.probation is not None:
            self.probation = self.probation.model_copy(update={"resume": False})

    def refuse(self, refusal: Refusal, kind: str, now: float) -> bool:
        """Record a refusal; returns whether it is news (not the same failure again)."""
        news = not refusal.same_failure(self.last_error)
        self.last_error = refusal
        if refusal.final and refusal.sha256:
            self.refused = {**self.refused, refusal.sha256: refusal}
        self.note(kind, now, code=refusal.code, version=refusal.version)
        return news
