"""Rollout progress per placement rule, for the dashboard's Rollouts page and its API.

A pure view over what placement already decides (DESIGN rule 4): the policy, the published
versions, the devices' reported model state and the rollback events they sent. A rule's
rollout target is the newest version it allows; a rollout is *stalled* when one device failed
its health gate on that version twice, and *halted* when a canary device refused it for good.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from provisioning.placement import (
    DeviceView,
    Policy,
    Published,
    Rule,
    Term,
    allowed_versions,
    canary_cohort,
    match_rules,
)

ROLLED_BACK = "model_rolled_back"
STALL_FAILURES = 2


def term_text(term: Term) -> str:
    if term.op in ("in", "notin"):
        return f"{term.key} {term.op} ({', '.join(term.values)})"
    return {"eq": f"{term.key}={term.values[0] if term.values else ''}",
            "ne": f"{term.key}!={term.values[0] if term.values else ''}",
            "has": term.key, "hasnot": f"!{term.key}"}[term.op]


@dataclass(frozen=True)
class RolloutStatus:
    rule: str
    selector: str
    model: str
    target: str | None
    previous: str | None
    canary_percent: int | None
    canary_devices: list[str]
    canary_committed: int
    devices: int
    on_target: int
    probation: int
    committed: int
    rolled_back: int
    refused: int
    stalled_devices: list[str]
    phase: str  # nothing-published, stalled, halted, canary, rolling-out, complete


def rollout_status(
    rule: Rule,
    catalog: Iterable[Published],
    group: Sequence[DeviceView],
    rollbacks: Sequence[dict[str, Any]],
) -> RolloutStatus:
    """``group``: the devices this rule decides; ``rollbacks``: their rollback event data."""
    versions = allowed_versions(rule, catalog)
    target = versions[-1].version if versions else None
    previous = versions[-2].version if len(versions) > 1 else None

    def reported(d: DeviceView) -> tuple[Any, Any]:
        return d.reported.get("name"), d.reported.get("version")

    on = [d for d in group if reported(d) == (rule.model, target)]
    error_of = {d.id: d.reported.get("last_error") or {} for d in group}
    failed_on_target = Counter(
        r["device_id"] for r in rollbacks
        if (r.get("name"), r.get("version")) == (rule.model, target)
    )
    rolled_back = {
        d.id for d in group
        if failed_on_target[d.id]
        or (error_of[d.id].get("version") == target and error_of[d.id].get("code") == "health-gate")
    }
    refused = {
        d.id for d in group
        if d.id not in rolled_back and error_of[d.id].get("code")
        and (error_of[d.id].get("name"), error_of[d.id].get("version")) == (rule.model, target)
    }
    stalled = sorted(dev for dev, n in failed_on_target.items() if n >= STALL_FAILURES)
    canary = rule.canary if rule.canary is not None and rule.canary < 100 else None
    cohort = canary_cohort(rule, target, group) if canary and target and group else []
    cohort_done = sum(d.runs(rule.model, target) for d in cohort) if target else 0
    committed = sum(d.reported.get("state") == "committed" for d in on)
    if target is None:
        phase = "nothing-published"
    elif stalled:
        phase = "stalled"
    elif any(d.refused(rule.model, target) for d in cohort):
        phase = "halted"
    elif group and committed == len(group):
        phase = "complete"
    elif cohort and cohort_done < len(cohort):
        phase = "canary"
    else:
        phase = "rolling-out"
    return RolloutStatus(
        rule=rule.name,
        selector=", ".join(term_text(t) for t in rule.selector),
        model=rule.model,
        target=target,
        previous=previous,
        canary_percent=canary,
        canary_devices=sorted(d.id for d in cohort),
        canary_committed=cohort_done,
        devices=len(group),
        on_target=len(on),
        probation=sum(d.reported.get("state") == "probation" for d in on),
        committed=committed,
        rolled_back=len(rolled_back),
        refused=len(refused),
        stalled_devices=stalled,
        phase=phase,
    )


def rollouts(
    policy: Policy,
    catalog: Iterable[Published],
    devices: Sequence[DeviceView],
    rollback_events: Sequence[dict[str, Any]],
) -> list[RolloutStatus]:
    """One status per rule, in policy order; ``rollback_events`` as the registry returns them."""
    catalog = list(catalog)
    chosen = match_rules(policy, devices)
    rollbacks = [e["data"] | {"device_id": e["device_id"]} for e in rollback_events]
    out = []
    for rule in policy.rules:
        group = [d for d in devices if chosen[d.id] is rule]
        ids = {d.id for d in group}
        out.append(rollout_status(rule, catalog, group,
                                  [r for r in rollbacks if r["device_id"] in ids]))
    return out
