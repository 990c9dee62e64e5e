"""The broker ACL does not grow with the fleet: device rules are ``%u`` patterns."""

from pathlib import Path

from provisioning.broker import access_on_disk, render_acl, write_access
from provisioning.home import HubHome, init_home
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


def test_the_broker_is_reloaded_only_when_its_acl_or_crl_changes(tmp_path: Path) -> None:
    """Enrolling a device changes neither file, so the broker is not reloaded; a revocation
    is. (A mosquitto reload drops what a disconnected hub session would have received.)"""
    home = HubHome(tmp_path / "hub")
    init_home(home, "localhost", 1883, 8443)
    home.broker_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(home.registry)
    try:
        registry.add_claim("site-a", "secret", {}, 2e9, 10, 1)
        assert write_access(home, registry)
        registry.add_device("dev-a", "site-a", {}, {}, 101)
        assert not write_access(home, registry)
        registry.revoke_device("dev-a")
        assert write_access(home, registry)
        assert access_on_disk(home) == ([101], render_acl(registry))
        assert not write_access(home, registry)
    finally:
        registry.close()
