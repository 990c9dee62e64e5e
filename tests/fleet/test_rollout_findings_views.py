"""The Rollouts and Findings views: pure folds over policy, catalog, reported state and events."""

from typing import Any

from provisioning.findings import report_url, summarize_findings, worst_severity
from provisioning.placement import (
    DeviceView,
    Published,
    canary_cohort,
    desired_states,
    parse_policy,
)
from provisioning.registry import Device
from provisioning.rollouts import rollouts

POLICY = parse_policy("""
[[rule]]
name = "bridges"
selector = "site in (b1, b2), region!=south"
model = "crack-vit"
version = ">=1.0,<2"
canary = 25

[[rule]]
name = "rest"
model = "crack-vit"
version = "==1.0.0"
""")
CATALOG = [Published("crack-vit", v, f"models/crack-vit/{v}.tar") for v in ("1.0.0", "1.1.0")]


def fleet(n: int, reported: dict[str, dict[str, Any]] | None = None) -> list[DeviceView]:
    reported = reported or {}
    return [DeviceView(f"d{i}", {"site": "b1"}, reported.get(f"d{i}", {})) for i in range(n)]


def on(version: str, state: str = "committed", **extra: Any) -> dict[str, Any]:
    return {"name": "crack-vit", "version": version, "state": state} | extra


def rollback(device: str, version: str = "1.1.0") -> dict[str, Any]:
    return {"device_id": device, "data": {"name": "crack-vit", "version": version,
                                          "code": "health-gate", "reason": "3 errors"}}


def test_canary_in_progress_counts_match_what_placement_publishes() -> None:
    devices = fleet(8)
    cohort = canary_cohort(POLICY.rules[0], "1.1.0", devices)
    assert len(cohort) == 2  # 25 % of 8
    reported = {cohort[0].id: on("1.1.0"), cohort[1].id: on("1.1.0", "probation")}
    reported |= {d.id: on("1.0.0") for d in devices if d not in cohort}
    devices = fleet(8, reported)
    status = rollouts(POLICY, CATALOG, devices, [])[0]
    assert (status.target, status.previous, status.phase) == ("1.1.0", "1.0.0", "canary")
    assert (status.devices, status.on_target, status.committed, status.probation) == (8, 2, 1, 1)
    assert status.canary_percent == 25 and status.canary_committed == 1
    assert status.canary_devices == sorted(d.id for d in cohort)
    # The devices outside the cohort wait on 1.0.0: the same split placement publishes.
    desired = desired_states(POLICY, CATALOG, devices)
    assert sorted(d for d, s in desired.items() if s.model and s.model.version == "1.1.0") == \
        status.canary_devices


def test_a_canary_that_refused_for_good_halts_the_rollout() -> None:
    devices = fleet(4)
    canary = canary_cohort(POLICY.rules[0], "1.1.0", devices)[0]
    error = {"name": "crack-vit", "version": "1.1.0", "code": "smoke-test"}
    devices = fleet(4, {canary.id: on("1.0.0", last_error=error)})
    status = rollouts(POLICY, CATALOG, devices, [])[0]
    assert (status.phase, status.refused, status.rolled_back) == ("halted", 1, 0)


def test_the_same_device_failing_its_health_gate_twice_stalls_the_rollout() -> None:
    devices = fleet(4)
    once = rollouts(POLICY, CATALOG, devices, [rollback("d1")])[0]
    assert once.phase != "stalled" and once.rolled_back == 1
    twice = rollouts(POLICY, CATALOG, devices, [rollback("d1"), rollback("d1"), rollback("d2")])[0]
    assert (twice.phase, twice.stalled_devices, twice.rolled_back) == ("stalled", ["d1"], 2)
    # A rollback of an older version is history, not this rollout's stall.
    old = rollouts(POLICY, CATALOG, devices, [rollback("d1", "1.0.0")] * 2)[0]
    assert old.phase != "stalled" and old.rolled_back == 0


def test_rules_split_the_fleet_and_complete_when_all_committed() -> None:
    devices = [
        DeviceView("a", {"site": "b1"}, on("1.1.0")),
        DeviceView("b", {"site": "b2", "region": "south"}, on("1.0.0")),
    ]
    bridges, rest = rollouts(POLICY, CATALOG, devices, [])
    assert (bridges.devices, bridges.phase, bridges.selector) == (
        1, "complete", "site in (b1, b2), region!=south")
    assert (rest.devices, rest.target, rest.phase, rest.selector) == (1, "1.0.0", "complete", "")


def test_nothing_published_is_its_own_phase() -> None:
    status = rollouts(POLICY, [], fleet(2), [])[0]
    assert (status.target, status.phase, status.canary_devices) == (None, "nothing-published", [])


def device(dev: str, site: str, **state: Any) -> Device:
    return Device(dev, "c", {"site": site}, {"hostname": f"{dev}.local"}, 1, 0.0, None,
                  "online", None, None, state or None)


def detection(dev: str, mission: str, labels: list[str], ts: float) -> dict[str, Any]:
    return {"device_id": dev, "ts": ts, "kind": "detection",
            "data": {"mission": mission, "labels": labels, "max_probs": {}}}


def test_findings_count_labels_and_worst_severity_per_mission_site_and_day() -> None:
    devices = {"a": device("a", "b1", api_port=8443), "b": device("b", "b2")}
    day = 86400 * 20_000.0
    events = [
        detection("a", "m1", ["crack", "spallation"], day + 10),
        detection("a", "m1", ["background"], day + 20),
        detection("a", "m1", ["efflorescence"], day + 86400),
        detection("b", "m2", ["crack"], day + 30),
    ]
    out = summarize_findings(events, devices)
    m1 = next(m for m in out["missions"] if m["mission"] == "m1")
    assert m1["images"] == 3 and m1["site"] == "b1"
    assert m1["labels"] == {"crack": 1, "spallation": 1, "efflorescence": 1}
    assert m1["severity"] == {"high": 1, "medium": 0, "low": 1}
    assert m1["report_url"] == "http://a.local:8443/v1/missions/m1/report"
    b1 = next(s for s in out["sites"] if s["site"] == "b1")
    assert [(d["day"], d["images"]) for d in b1["days"]] == [("2024-10-04", 2), ("2024-10-05", 1)]
    assert next(m for m in out["missions"] if m["mission"] == "m2")["report_url"] is None


def test_severity_and_report_link_edge_cases() -> None:
    assert worst_severity(["background"]) is None
    assert worst_severity(["unknown-label"]) == "medium"
    assert report_url(None, "m") is None
    link = report_url(device("a", "s", api_port=1), "bridge 17/north")
    assert link == "http://a.local:1/v1/missions/bridge%2017%2Fnorth/report"
