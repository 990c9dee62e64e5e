"""The broker ACL does not grow with the fleet: device rules are ``%u`` patterns."""

from pathlib import Path

from provisioning.broker import render_acl
from provisioning.registry import Registry


def fleet_of(tmp_path: Path, devices: int) -> Registry:
    registry = Registry(tmp_path / f"registry-{devices}.db")
    registry.add_claim("site-a", "secret", {}, 2e9, devices + 1, 1)
    for i in range(devices):
        registry.add_device(f"dev-{i:05d}", "site-a", {}, {}, 100 + i)
    return registry


def test_acl_is_the_same_for_one_device_and_for_a_thousand(tmp_path: Path) -> None:
    one, many = fleet_of(tmp_path, 1), fleet_of(tmp_path, 1000)
    try:
        assert render_acl(one) == render_acl(many)
        assert "dev-00000" not in render_acl(many)
    finally:
        one.close()
        many.close()


def test_device_rules_are_patterns_on_the_certificate_name(tmp_path: Path) -> None:
    registry = fleet_of(tmp_path, 1)
    try:
        acl = render_acl(registry).splitlines()
    finally:
        registry.close()
    assert "pattern write spoke/v1/%u/health" in acl
    assert "pattern read spoke/v1/%u/desired" in acl
    assert "pattern read spoke/v1/%u/cmd/+" in acl
    assert "pattern write spoke/v1/%u/cmd/+/result" in acl
