"""Placement policies: the pure function that decides each device's desired model."""

import pytest

from appliance.errors import ConfigError
from provisioning.placement import (
    DeviceView,
    Published,
    desired_states,
    parse_constraint,
    parse_policy,
    parse_selector,
)

CATALOG = [Published("codebrim-vit-s", v, f"models/codebrim-vit-s/codebrim-vit-s-{v}.tar")
           for v in ("1.1.0", "1.2.0", "1.10.0", "2.0.0")]


def _match(selector: str, labels: dict[str, str]) -> bool:
    return all(t.matches(labels) for t in parse_selector(selector))


def test_selector_in_set():
    assert _match("site in (bridge-17, bridge-18)", {"site": "bridge-18"})
    assert not _match("site in (bridge-17, bridge-18)", {"site": "bridge-19"})


def test_selector_terms_all_must_hold():
    sel = "site in (a,b), gpu=true, region!=south"
    assert _match(sel, {"site": "a", "gpu": "true", "region": "north"})
    assert not _match(sel, {"site": "a", "gpu": "true", "region": "south"})
    assert not _match(sel, {"site": "a", "gpu": "false"})


def test_selector_presence_and_absence():
    assert _match("gpu, !decommissioned", {"gpu": "true"})
    assert not _match("gpu", {})


def test_bad_selector_is_refused_with_the_term():
    with pytest.raises(ConfigError, match="site ~ a"):
        parse_selector("site ~ a")


def test_version_constraint_orders_semantically():
    c = parse_constraint(">=1.2,<2")
    assert [p.version for p in CATALOG if c.allows(p.version)] == ["1.2.0", "1.10.0"]


def test_exact_version_is_a_pin():
    assert parse_constraint("==1.1.0").pinned
    assert not parse_constraint(">=1.1.0").pinned


def _policy(extra: str = "") -> str:
    return f"""
[[rule]]
selector = "site in (bridge-17, bridge-18), gpu=true"
model = "codebrim-vit-s"
version = ">=1.2,<2"
{extra}
"""


def test_newest_allowed_version_is_desired():
    states = desired_states(parse_policy(_policy()), CATALOG,
                            [DeviceView("d1", {"site": "bridge-17", "gpu": "true"})])
    assert states["d1"].model and states["d1"].model.version == "1.10.0"
    assert not states["d1"].model.pinned


def test_device_without_a_matching_rule_gets_no_model():
    states = desired_states(parse_policy(_policy()), CATALOG, [DeviceView("d1", {"gpu": "1"})])
    assert states["d1"].model is None and states["d1"].note


def _fleet(n: int, reported: dict[str, dict[str, str]] | None = None) -> list[DeviceView]:
    return [DeviceView(f"d{i}", {"site": "bridge-17", "gpu": "true"},
                       (reported or {}).get(f"d{i}", {})) for i in range(n)]


def test_canary_gets_the_new_version_first():
    states = desired_states(parse_policy(_policy("canary = 10")), CATALOG, _fleet(20))
    versions = [s.model.version for s in states.values() if s.model]
    assert versions.count("1.10.0") == 2 and versions.count("1.2.0") == 18


def test_canary_promotes_once_every_canary_committed():
    policy = parse_policy(_policy("canary = 10"))
    first = desired_states(policy, CATALOG, _fleet(20))
    canaries = [d for d, s in first.items() if s.model and s.model.version == "1.10.0"]
    done = {d: {"name": "codebrim-vit-s", "version": "1.10.0", "state": "committed"}
            for d in canaries}
    after = desired_states(policy, CATALOG, _fleet(20, done))
    assert {s.model.version for s in after.values() if s.model} == {"1.10.0"}


def test_canary_refusal_halts_the_rollout():
    policy = parse_policy(_policy("canary = 10"))
    first = desired_states(policy, CATALOG, _fleet(20))
    canaries = [d for d, s in first.items() if s.model and s.model.version == "1.10.0"]
    failed = {canaries[0]: {"name": "codebrim-vit-s", "version": "1.2.0", "state": "committed",
                            "last_error": {"name": "codebrim-vit-s", "version": "1.10.0",
                                           "code": "health-gate"}}}
    after = desired_states(policy, CATALOG, _fleet(20, failed))
    others = [s for d, s in after.items() if d not in canaries]
    assert all(s.model and s.model.version == "1.2.0" for s in others)
    assert all("halted" in (s.note or "") for s in others)


def test_policy_with_unknown_keys_is_refused():
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_policy(_policy('colour = "red"'))
