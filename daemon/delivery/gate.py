"""The pure parts of the reconciler: may a version be installed, and has a new model passed.

No I/O here (DESIGN rule 4): both are plain functions and a small class fed with timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.versions import version_key


def downgrade_refusal(version: str, committed: str | None, pinned: bool) -> str | None:
    """Why installing ``version`` would be a downgrade the operator did not choose, or None.

    Rollback protection beyond TUF: a signed but older version (say, one with a known flaw)
    is never activated over the committed one unless the desired state pins it exactly.
    """
    if committed is None or pinned:
        return None
    if version_key(version) < version_key(committed):
        return f"{version} is lower than the committed {committed} and the hub did not pin it"
    return None


@dataclass
class HealthGate:
    """Commit after ``good_needed`` good inferences or ``quiet_s`` seconds without errors;
    fail at ``max_errors`` failed inferences. ``verdict`` is None while undecided."""

    started: float
    good_needed: int
    quiet_s: float
    max_errors: int
    good: int = 0
    errors: list[str] = field(default_factory=list)

    def observe(self, ok: bool, error: str | None = None) -> None:
        if ok:
            self.good += 1
        else:
            self.errors.append(error or "inference failed")

    def verdict(self, now: float) -> str | None:
        if len(self.errors) >= self.max_errors:
            return "fail"
        if self.good >= self.good_needed or now - self.started >= self.quiet_s:
            return "pass"
        return None

    def reason(self) -> str:
        if self.errors:
            return f"{len(self.errors)} failed inference(s), last: {self.errors[-1]}"
        return f"{self.good} good inferences"
