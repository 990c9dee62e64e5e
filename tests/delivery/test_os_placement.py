"""Placement of OS versions: the same rules, pins and canaries as models, on their own track."""

import pytest

from appliance.errors import ConfigError
from appliance.osupdate import OS_NAME
from provisioning.placement import DeviceView, Published, desired_states, parse_policy

MODELS = [Published("m", "1.0.0", "models/m/m-1.0.0.tar")]
OSES = [Published(OS_NAME, v, f"os/{v}/manifest.json") for v in ("1", "2", "3")]


def _policy(extra: str) -> str:
    return f"""
[[rule]]
selector = "site=b1"
model = "m"
{extra}
"""


def _fleet(n: int, os: dict[str, dict[str, object]] | None = None) -> list[DeviceView]:
    return [DeviceView(f"d{i}", {"site": "b1"}, {}, (os or {}).get(f"d{i}", {}))
            for i in range(n)]


def test_newest_allowed_os_version_is_desired_beside_the_model():
    states = desired_states(parse_policy(_policy('os_version = "<3"')), MODELS + OSES, _fleet(1))
    s = states["d0"]
    assert s.model and s.model.version == "1.0.0"
    assert s.os and (s.os.version, s.os.target) == ("2", "os/2/manifest.json")
    assert not s.os.pinned


def test_a_rule_without_os_version_leaves_the_os_alone():
    states = desired_states(parse_policy(_policy("")), MODELS + OSES, _fleet(1))
    assert states["d0"].os is None and states["d0"].model is not None


def test_an_exact_os_version_is_a_pin():
    states = desired_states(parse_policy(_policy('os_version = "==1"')), MODELS + OSES,
                            _fleet(1))
    assert states["d0"].os and states["d0"].os.version == "1" and states["d0"].os.pinned


def test_os_canary_gets_the_new_version_first_then_the_rest_follow():
    policy = parse_policy(_policy('os_version = "*"\nos_canary = 10'))
    first = desired_states(policy, MODELS + OSES, _fleet(20))
    canaries = [d for d, s in first.items() if s.os and s.os.version == "3"]
    assert len(canaries) == 2
    assert all(s.os and s.os.version == "2" for d, s in first.items() if d not in canaries)
    done = {d: {"name": OS_NAME, "version": "3", "state": "committed"} for d in canaries}
    after = desired_states(policy, MODELS + OSES, _fleet(20, done))
    assert {s.os.version for s in after.values() if s.os} == {"3"}


def test_an_os_canary_that_rolled_back_halts_the_os_rollout():
    policy = parse_policy(_policy('os_version = "*"\nos_canary = 10'))
    first = desired_states(policy, MODELS + OSES, _fleet(20))
    canaries = [d for d, s in first.items() if s.os and s.os.version == "3"]
    canary = canaries[0]
    rolled = {canary: {"name": OS_NAME, "version": "2", "state": "committed",
                       "last_error": {"name": OS_NAME, "version": "3", "code": "rolled-back"}}}
    after = desired_states(policy, MODELS + OSES, _fleet(20, rolled))
    others = [s for d, s in after.items() if d not in canaries]
    assert all(s.os and s.os.version == "2" for s in others)
    assert all(s.os_note and "halted" in s.os_note for s in others)


def test_os_canary_without_os_version_is_refused():
    with pytest.raises(ConfigError, match="os_canary needs os_version"):
        parse_policy(_policy("os_canary = 10"))


def test_os_canary_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="os_canary must be a percentage"):
        parse_policy(_policy('os_version = "*"\nos_canary = 0'))
