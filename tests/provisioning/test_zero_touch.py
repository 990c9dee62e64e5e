"""Zero touch, identity reuse and clean shutdown, against a real hub and mosquitto over TLS."""

import json
import socket
import ssl
import stat
from pathlib import Path

from cryptography import x509

from appliance import identity
from tests.support.fleet import Appliance, Hub, wait_for


def test_appliance_goes_from_bundle_to_online_with_no_other_input(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    device = hub.wait_availability(device_id, "online")
    assert device["labels"] == {"site": "bridge-17", "region": "north"}
    assert device["facts"]["cpu_count"] >= 1 and device["facts"]["memory_bytes"] > 0
    assert device["state"]["provisioning"] == "enrolled"
    assert device["software_version"]


def test_device_key_is_private_and_never_sent(hub: Hub, bundle: Path, appliance: Appliance) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    key = appliance.state_dir / "identity" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_body = "".join(key.read_text().splitlines()[1:-1])
    assert key_body not in (hub.home / "registry.db").read_bytes().decode(errors="replace")
    assert device_id.startswith("dev-")


def test_restart_reuses_identity_without_enrolling_again(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    appliance.start(bundle)
    first = appliance.wait_enrolled()
    assert appliance.stop() == 0
    appliance.start()
    assert appliance.wait_enrolled() == first
    hub.wait_availability(first, "online")
    assert hub.enrollments_in_log() == 1


def test_two_appliances_with_the_same_bundle_get_distinct_ids(
    hub: Hub, bundle: Path, appliances: list[Appliance], tmp_path: Path
) -> None:
    pair = [Appliance(tmp_path, hub, f"box{i}") for i in range(2)]
    appliances.extend(pair)
    for a in pair:
        a.start(bundle)
    ids = {a.wait_enrolled() for a in pair}
    assert len(ids) == 2
    for device_id in ids:
        hub.wait_availability(device_id, "online")


def test_sigterm_publishes_stopped_and_exits_zero(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    hub.wait_availability(device_id, "online")
    log = appliance.process.log if appliance.process else None
    assert appliance.stop() == 0
    hub.wait_availability(device_id, "stopped")
    assert log is not None
    lines = log.read_text().splitlines()
    started = [ln.rsplit("service=", 1)[1] for ln in lines if "service started" in ln]
    stopped = [ln.rsplit("service=", 1)[1] for ln in lines if "service stopped" in ln]
    assert "hublink" in started
    assert stopped == started[::-1]


def test_status_explains_why_provisioning_is_stuck_without_a_bundle(
    hub: Hub, appliance: Appliance
) -> None:
    appliance.start()
    prov = appliance.wait_provisioning("waiting-for-bundle")
    assert "no bundle found" in prov["reason"]
    assert appliance.status()["device_id"] is None


def test_heartbeats_keep_last_seen_fresh(hub: Hub, bundle: Path, appliance: Appliance) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    first = hub.wait_availability(device_id, "online")["last_seen"]
    wait_for(lambda: hub.devices()[device_id]["last_seen"] > first + 1, 10, "a later heartbeat")


def test_devices_json_lists_labels_facts_and_presence(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    device = hub.wait_availability(device_id, "online")
    assert set(device) >= {"id", "labels", "facts", "availability", "last_seen", "software_version"}
    json.dumps(device)


def test_an_enrolled_appliance_serves_https_with_a_server_certificate_from_the_hub_ca(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    """SANs: the device id and the addresses it serves; a client trusting only the hub CA
    connects, and the certificate is renewed with the device certificate (same key)."""
    appliance.start(bundle)
    device_id = appliance.wait_enrolled(180)
    ctx = ssl.create_default_context(cafile=str(hub.home / "ca" / "ca.crt"))

    def served() -> x509.Certificate | None:
        try:
            with socket.create_connection(("127.0.0.1", appliance.api_port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                der = tls.getpeercert(binary_form=True)
        except (OSError, ssl.SSLError):
            return None  # still the self-signed one from before enrollment
        return x509.load_der_x509_certificate(der) if der else None

    cert = wait_for(served, 60, "the hub-issued API certificate")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert device_id in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    on_disk = (appliance.state_dir / "identity" / "server.crt").read_bytes()
    assert x509.load_pem_x509_certificate(on_disk) == cert
    key = identity.load_private_key((appliance.state_dir / "identity" / "device.key").read_bytes())
    assert identity.cert_matches_key(cert, key)
