"""Placement policies: which model version each device should run. A pure core (DESIGN rule 4).

A policy is a TOML file of rules; the first rule whose selector matches a device's labels
decides its model::

    [[rule]]
    selector = "site in (bridge-17, bridge-18), gpu=true, region!=south"
    model = "codebrim-vit-s"
    version = ">=1.2,<2"
    canary = 10   # percent of matching devices get a new version first

Selectors are comma-separated terms, all of which must hold: ``key=value`` (or ``==``),
``key!=value``, ``key in (a, b)``, ``key notin (a, b)``, ``key`` (present), ``!key`` (absent).
Versions are comma-separated ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=`` clauses; ``==X`` alone
pins X, which is what lets a device go back to an older version.

Canary: the newest allowed version goes to ``canary`` percent of the rule's devices first,
picked by a stable hash of device and version. Once all of them report it committed, the rest
follow; until then (or when a canary device refused it) they stay on the version before.

OS updates ride on the same rules: ``os_version = ">=2"`` and ``os_canary = 10`` choose the
OS version (published with ``spoke-hub os publish``) exactly as ``version``/``canary`` choose
the model; a rule without ``os_version`` leaves the OS alone.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.delivery import FINAL_REFUSALS, DesiredModel, DesiredState
from appliance.errors import ConfigError
from appliance.osupdate import OS_NAME, DesiredOs
from appliance.versions import version_key

_KEY = r"[a-z][a-z0-9_.-]*"
_VAL = r"[A-Za-z0-9_.-]+"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(\s*({_VAL}(?:\s*,\s*{_VAL})*)\s*\)$")
_CMP = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VAL})$")
_HAS = re.compile(rf"^(!?)({_KEY})$")
_CLAUSE = re.compile(r"^(>=|<=|==|!=|>|<)\s*([0-9][0-9A-Za-z.+-]*)$")


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # eq, ne, in, notin, has, hasnot
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "has":
            return value is not None
        if self.op == "hasnot":
            return value is None
        if self.op in ("eq", "in"):
            return value in self.values
        return value not in self.values  # ne, notin: an absent label is "not equal"


def _split_terms(text: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur.strip())
            cur = ""
        else:
            cur += ch
    terms.append(cur.strip())
    return [t for t in terms if t]


def parse_selector(text: str) -> tuple[Term, ...]:
    terms = []
    for part in _split_terms(text):
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m.group(3).split(","))
            terms.append(Term(m.group(1), m.group(2), values))
        elif m := _CMP.match(part):
            terms.append(Term(m.group(1), "ne" if m.group(2) == "!=" else "eq", (m.group(3),)))
        elif m := _HAS.match(part):
            terms.append(Term(m.group(2), "hasnot" if m.group(1) else "has"))
        else:
            raise ConfigError(f"selector term {part!r} is not key=v, key!=v, key in (a,b), "
                              "key notin (a,b), key or !key")
    return tuple(terms)


@dataclass(frozen=True)
class Constraint:
    clauses: tuple[tuple[str, str], ...]

    def allows(self, version: str) -> bool:
        v = version_key(version)
        for op, bound in self.clauses:
            b = version_key(bound)
            ok = {">=": v >= b, ">": v > b, "<=": v <= b, "<": v < b, "==": v == b,
                  "!=": v != b}[op]
            if not ok:
                return False
        return True

    @property
    def pinned(self) -> bool:
        return len(self.clauses) == 1 and self.clauses[0][0] == "=="


def parse_constraint(text: str) -> Constraint:
    text = text.strip()
    if text in ("", "*"):
        return Constraint(())
    clauses = []
    for part in (p.strip() for p in text.split(",")):
        m = _CLAUSE.match(part)
        if not m:
            raise ConfigError(f"version clause {part!r} is not like >=1.2 or <2 or ==1.2.3")
        clauses.append((m.group(1), m.group(2)))
    return Constraint(tuple(clauses))


@dataclass(frozen=True)
class Rule:
    name: str
    selector: tuple[Term, ...]
    model: str
    version: Constraint
    canary: int | None = None
    os_version: Constraint | None = None
    os_canary: int | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        return all(t.matches(labels) for t in self.selector)

    def os_rule(self) -> Rule:
        """The rule's OS track as a rule of its own over the OS 'model', so versions, pins and
        canaries work exactly as for models."""
        return replace(self, model=OS_NAME, version=self.os_version or Constraint(()),
                       canary=self.os_canary, os_version=None, os_canary=None)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()


_RULE_KEYS = {"name", "selector", "model", "version", "canary", "os_version", "os_canary"}


def parse_policy(text: str, source: str = "policy") -> Policy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"rule"}
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; rules go in [[rule]]")
    rules = []
    for i, raw in enumerate(doc.get("rule", []), 1):
        where = f"{source}: rule {i}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = set(raw) - _RULE_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
        if not isinstance(raw.get("model"), str) or not raw["model"]:
            raise ConfigError(f"{where}: needs model = \"NAME\"")
        for key in ("canary", "os_canary"):
            pct = raw.get(key)
            if pct is not None and (not isinstance(pct, int) or not 1 <= pct <= 100):
                raise ConfigError(f"{where}: {key} must be a percentage from 1 to 100")
        if "os_canary" in raw and "os_version" not in raw:
            raise ConfigError(f"{where}: os_canary needs os_version = \"...\"")
        try:
            rules.append(Rule(
                name=str(raw.get("name") or f"rule-{i}"),
                selector=parse_selector(str(raw.get("selector", ""))),
                model=raw["model"],
                version=parse_constraint(str(raw.get("version", "*"))),
                canary=raw.get("canary"),
                os_version=(parse_constraint(str(raw["os_version"])) if "os_version" in raw
                            else None),
                os_canary=raw.get("os_canary"),
            ))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return Policy(tuple(rules))


def load_policy(path: Path) -> Policy:
    if not path.exists():
        return Policy()
    return parse_policy(path.read_text(), str(path))


@dataclass(frozen=True)
class Published:
    name: str
    version: str
    target: str


@dataclass(frozen=True)
class DeviceView:
    """What placement needs of a device: its labels and the model and OS it reports."""

    id: str
    labels: dict[str, str]
    reported: dict[str, Any] = field(default_factory=dict)
    os: dict[str, Any] = field(default_factory=dict)  # reported OS, the same shape as a model

    def runs(self, name: str, version: str) -> bool:
        r = self.reported
        return (r.get("name"), r.get("version"), r.get("state")) == (name, version, "committed")

    def refused(self, name: str, version: str) -> bool:
        err = self.reported.get("last_error") or {}
        return (err.get("name"), err.get("version")) == (name, version) and \
            err.get("code") in FINAL_REFUSALS


def _cohort_rank(model: str, version: str, device: str) -> str:
    return hashlib.sha256(f"{model}@{version}/{device}".encode()).hexdigest()


def allowed_versions(rule: Rule, catalog: Iterable[Published]) -> list[Published]:
    """The published versions a rule allows, oldest first (the last is its rollout target)."""
    return sorted(
        (p for p in catalog if p.name == rule.model and rule.version.allows(p.version)),
        key=lambda p: version_key(p.version),
    )


def canary_cohort(rule: Rule, version: str, group: Sequence[DeviceView]) -> list[DeviceView]:
    """The rule's devices that get ``version`` first: a stable ``canary`` percent, at least one."""
    k = max(1, math.ceil(len(group) * (rule.canary or 100) / 100))
    return sorted(group, key=lambda d: _cohort_rank(rule.model, version, d.id))[:k]


def match_rules(policy: Policy, devices: Iterable[DeviceView]) -> dict[str, Rule | None]:
    """Each device's deciding rule: the first whose selector matches its labels."""
    return {
        dev.id: next((r for r in policy.rules if r.matches(dev.labels)), None) for dev in devices
    }


def _rollout(
    rules: dict[str, Rule], chosen: dict[str, Rule | None], catalog: list[Published],
    devices: Sequence[DeviceView],
) -> dict[str, tuple[Published | None, str | None]]:
    """One track's pick for each device whose deciding rule is in ``rules`` (by name): the
    newest allowed version, held back to the one before while its canary has not committed."""
    by_rule: dict[str, list[DeviceView]] = {}
    for dev in devices:
        rule = chosen[dev.id]
        if rule is not None and rule.name in rules:
            by_rule.setdefault(rule.name, []).append(dev)
    # Per rule, not per device: its allowed versions, and its canary cohort with how it went
    # (cohort ids, all promoted, any refused for good).
    allowed = {name: allowed_versions(r, catalog) for name, r in rules.items()}
    canaries: dict[str, tuple[set[str], bool, bool]] = {}
    out: dict[str, tuple[Published | None, str | None]] = {}
    for name, group in by_rule.items():
        rule, versions = rules[name], allowed[name]
        for dev in group:
            if not versions:
                out[dev.id] = (None, f"no published {rule.model} satisfies the rule")
                continue
            pick, note = versions[-1], None
            if rule.canary is not None and rule.canary < 100:
                if name not in canaries:
                    cohort = canary_cohort(rule, pick.version, group)
                    canaries[name] = (
                        {d.id for d in cohort},
                        all(d.runs(pick.name, pick.version) for d in cohort),
                        any(d.refused(pick.name, pick.version) for d in cohort),
                    )
                ids, promoted, halted = canaries[name]
                if dev.id not in ids and (halted or not promoted):
                    note = (f"canary of {pick.version} failed: rollout halted" if halted
                            else f"waiting for the canary of {pick.version}")
                    older = versions[:-1]
                    if not older:
                        out[dev.id] = (None, note)
                        continue
                    pick = older[-1]
            out[dev.id] = (pick, note)
    return out


def desired_states(
    policy: Policy, catalog: Iterable[Published], devices: Sequence[DeviceView]
) -> dict[str, DesiredState]:
    """Every device's desired state (model and OS), from the policy, what is published and
    what is reported."""
    catalog = list(catalog)
    chosen = match_rules(policy, devices)
    models = _rollout({r.name: r for r in policy.rules}, chosen, catalog, devices)
    os_rules = {r.name: r.os_rule() for r in policy.rules if r.os_version is not None}
    oses = _rollout(os_rules, chosen, catalog,
                    [DeviceView(d.id, d.labels, d.os) for d in devices])
    out: dict[str, DesiredState] = {}
    for dev in devices:
        rule = chosen[dev.id]
        if rule is None:
            out[dev.id] = DesiredState(note="no placement rule matches this device")
            continue
        pick, note = models[dev.id]
        os_pick, os_note = oses.get(dev.id, (None, None))
        out[dev.id] = DesiredState(
            model=None if pick is None else DesiredModel(
                name=pick.name, version=pick.version, target=pick.target,
                pinned=rule.version.pinned),
            os=None if os_pick is None else DesiredOs(
                version=os_pick.version, target=os_pick.target,
                pinned=rule.os_version is not None and rule.os_version.pinned),
            rule=rule.name,
            note=note,
            os_note=os_note,
        )
    return out
