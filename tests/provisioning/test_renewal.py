"""Renewal for real: a hub issuing 104-second certificates, a real mosquitto checking them.

The CA back-dates every certificate by 5 minutes (clock skew), so a lifetime of L seconds is
L + 300 s from ``not_before``; the renewal share below is chosen so the device renews about
half a minute after each issue, well before the end.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from appliance import identity
from tests.support.fleet import Appliance, Hub, cli, wait_for
from tests.support.probe import Probe

# Each test waits out at least one real certificate lifetime.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SHORT = {"SPOKE_HUB_ENROLLMENT__DEVICE_CERT_DAYS": "0.0012"}  # 104 s
# 0.85 of 404 s from not_before: a renewal about 43 s after each issue.
RENEW_SOON = {"SPOKE_HUB__RENEW_AT_SHARE": "0.85", "SPOKE_HUB__RENEW_RETRY_S": "2"}
NO_RENEWAL = {"SPOKE_HUB__RENEW_AT_SHARE": "0.99"}


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    h = Hub(tmp_path).start(env=SHORT)
    yield h  # type: ignore[misc]
    h.stop()


def cert_of(path: Path) -> identity.x509.Certificate:
    return identity.load_cert(path.read_bytes())


def device_certs(hub: Hub, device_id: str) -> list[dict[str, object]]:
    from provisioning.registry import Registry

    registry = Registry(hub.home / "registry.db")
    try:
        with registry.engine.begin() as conn:
            rows = conn.execute(
                sa.text("SELECT serial, retired_at FROM device_certs WHERE device_id = :d"),
                {"d": device_id},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        registry.close()


def probe_with(hub: Hub, ident_dir: Path, client_id: str) -> Probe:
    return Probe(
        hub.mqtt_port, ident_dir / "ca.crt", ident_dir / "device.crt", ident_dir / "device.key",
        client_id,
    )


def test_online_past_the_first_certificates_lifetime_without_re_enrolling(
    hub: Hub, appliance: Appliance, bundle: Path, tmp_path: Path
) -> None:
    appliance.start(bundle, env=RENEW_SOON)
    device_id = appliance.wait_enrolled(180)
    ident = appliance.state_dir / "identity"
    first = cert_of(ident / "device.crt")
    first_end = identity.cert_not_after(first)

    # The first renewal: the old identity is kept aside, then retired once the new is proven.
    wait_for(
        lambda: cert_of(ident / "device.crt").serial_number != first.serial_number,
        60, "the first renewal",
    )
    old = tmp_path / "old-identity"
    shutil.copytree(appliance.state_dir / "identity.previous", old)
    assert cert_of(old / "device.crt").serial_number == first.serial_number
    wait_for(
        lambda: any(
            r["serial"] == str(first.serial_number) and r["retired_at"]
            for r in device_certs(hub, device_id)
        ),
        30, "the hub to retire the replaced certificate",
    )

    def clone_refused() -> bool:
        """The broker re-reads the CRL on SIGHUP, a moment after the registry says retired."""
        clone = probe_with(hub, old, device_id + "-clone")
        try:
            return not clone.connect()
        finally:
            clone.close()

    wait_for(clone_refused, 20, "the broker to refuse the replaced certificate (CRL)")
    assert time.time() < identity.cert_not_after(first), "refused by the CRL, not by its end"

    # Past the first certificate's end: still online, same id, never enrolled again.
    wait_for(lambda: time.time() > first_end + 5, 120, "the first certificate to expire")
    status = wait_for(
        lambda: (s := appliance.status())["hub"]["connected"] and s, 30, "the link"
    )
    assert status["device_id"] == device_id
    assert not status["certificate"]["expired"]
    assert hub.enrollments_in_log() == 1
    assert len(hub.claim_ids()) == 1
    devices = hub.devices()
    assert list(devices) == [device_id]
    assert devices[device_id]["cert_not_after"] > first_end

    # No lost events: every renewal the hub signed reached it as an event, exactly once.
    def all_renewals_reported() -> bool:
        renewed = len(device_certs(hub, device_id)) - 1
        events = hub.events(device_id, "certificate_renewed")
        return renewed >= 2 and len(events) == renewed

    wait_for(all_renewals_reported, 60, "a certificate_renewed event per renewal")

    def api_cert_renewed_with_the_key() -> bool:
        key = identity.load_private_key((ident / "device.key").read_bytes())
        return identity.cert_matches_key(cert_of(ident / "server.crt"), key)

    wait_for(api_cert_renewed_with_the_key, 30, "the API certificate to follow the new key")
    ping = json.loads(
        cli("spoke-hub", "device", "cmd", "--home", str(hub.home), device_id, "ping",
            "--json").stdout
    )
    assert ping["ok"]


def test_offline_past_expiry_reports_it_and_re_enrolls_only_with_a_valid_bundle(
    hub: Hub, appliance: Appliance, bundle: Path, tmp_path: Path
) -> None:
    appliance.start(bundle, env=NO_RENEWAL)
    device_id = appliance.wait_enrolled(180)
    appliance.stop()
    end = identity.cert_not_after(cert_of(appliance.state_dir / "identity" / "device.crt"))
    for claim in hub.claim_ids():
        cli("spoke-hub", "bundle", "revoke", "--home", str(hub.home), claim)
    wait_for(lambda: time.time() > end + 1, 120, "the certificate to expire offline")

    appliance.start(bundle, env=NO_RENEWAL)
    prov = appliance.wait_provisioning("certificate-expired", 60)
    wait_for(
        lambda: "claim-revoked" in (appliance.status()["provisioning"]["reason"] or ""),
        60, "the refused re-enrollment to be reported",
    )
    assert "certificate expired" in prov["reason"]
    text = cli("spoke", "status", "--state-dir", str(appliance.state_dir)).stdout
    assert "certificate-expired" in text and "EXPIRED" in text
    assert not appliance.status()["hub"]["connected"]
    appliance.stop()

    fresh = hub.bundle(tmp_path / "fresh.spoke")
    appliance.start(fresh, env=NO_RENEWAL)
    assert appliance.wait_enrolled(180) == device_id
    assert list(hub.devices()) == [device_id]
    assert hub.devices()[device_id]["cert_not_after"] > time.time()
