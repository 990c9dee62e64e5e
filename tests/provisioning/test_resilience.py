"""Restarts, revocation and power loss: the device recovers without enrolling again."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from appliance import identity
from tests.support.fleet import Appliance, Hub, cli, wait_for


def test_hub_restart_device_reconnects_without_enrolling_again(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    hub.wait_availability(device_id, "online")
    hub.stop()
    wait_for(lambda: not appliance.status()["hub"]["connected"], 20, "the device to notice")
    hub.start()
    device = hub.wait_availability(device_id, "online", timeout=30)
    assert device["state"]["device_id"] == device_id
    assert hub.enrollments_in_log() == 0
    assert appliance.status()["device_id"] == device_id


def test_broker_crash_is_restarted_and_device_comes_back_with_retained_state(
    hub: Hub, bundle: Path, appliance: Appliance
) -> None:
    appliance.start(bundle)
    device_id = appliance.wait_enrolled()
    hub.wait_availability(device_id, "online")
    old_pid = hub.broker_pid()
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: hub.broker_pid() != old_pid, 20, "the hub to restart mosquitto")
    wait_for(lambda: appliance.status()["hub"]["connected"], 30, "the device to reconnect")
    from tests.support.probe import Probe

    witness = Probe(
        hub.mqtt_port,
        hub.home / "ca" / "ca.crt",
        hub.home / "hub" / "hub.crt",
        hub.home / "hub" / "hub.key",
        "retained-check",
    )
    assert witness.connect()
    try:
        witness.subscribe(f"spoke/v1/{device_id}/+")
        assert witness.received(f"spoke/v1/{device_id}/available", 3)[-1:] == [b"online"]
    finally:
        witness.close()
    assert hub.enrollments_in_log() == 1


def test_backoff_is_capped_by_config(hub: Hub, bundle: Path, appliance: Appliance) -> None:
    appliance.start(bundle, env={"SPOKE_HUB__BACKOFF_CAP_S": "1.5"})
    device_id = appliance.wait_enrolled()
    hub.stop()
    time.sleep(6)
    hub.start()
    started = time.monotonic()
    hub.wait_availability(device_id, "online", timeout=30)
    assert appliance.process is not None
    delays = [
        float(line.rsplit("retry_s=", 1)[1].split()[0])
        for line in appliance.process.output().splitlines()
        if "hub link down" in line
    ]
    assert delays and max(delays) <= 1.5
    assert time.monotonic() - started < 15


def test_revoked_device_is_cut_off_and_others_stay_online(
    hub: Hub, bundle: Path, appliances: list[Appliance], tmp_path: Path
) -> None:
    bad, good = Appliance(tmp_path, hub, "bad"), Appliance(tmp_path, hub, "good")
    appliances.extend([bad, good])
    bad.start(bundle)
    good.start(bundle)
    bad_id, good_id = bad.wait_enrolled(), good.wait_enrolled()
    broker_pid = hub.broker_pid()
    cli("spoke-hub", "device", "revoke", "--home", str(hub.home), bad_id)
    wait_for(lambda: not bad.status()["hub"]["connected"], 20, "the revoked device to drop")
    time.sleep(3)
    assert not bad.status()["hub"]["connected"]
    assert hub.devices()[bad_id]["availability"] == "revoked"
    assert hub.broker_pid() == broker_pid
    hub.wait_availability(good_id, "online")
    assert good.status()["hub"]["connected"]


@pytest.mark.slow
def test_power_loss_during_enrollment_never_leaves_a_half_identity(
    hub: Hub, tmp_path: Path
) -> None:
    """kill -9 at a spread of moments from start to enrolled, then restart each time."""
    bundle = hub.bundle(tmp_path / "many.spoke", "--max-uses", "20")
    for i, delay in enumerate([0.0, 0.3, 0.6, 0.9, 1.2, 1.6, 2.0, 3.0]):
        a = Appliance(tmp_path, hub, f"box{i}")
        a.start(bundle)
        time.sleep(delay)
        a.kill()
        ident_dir = a.state_dir / "identity"
        if ident_dir.exists():
            assert sorted(p.name for p in ident_dir.iterdir()) == [
                "ca.crt",
                "device.crt",
                "device.key",
                "identity.json",
                "server.crt",  # the API's certificate, issued with the device's at enrollment
            ]
        a.start(bundle)  # the stick is still plugged in
        try:
            device_id = a.wait_enrolled(timeout=40)
        finally:
            a.kill()
        key = identity.load_private_key((ident_dir / "device.key").read_bytes())
        cert = identity.load_cert((ident_dir / "device.crt").read_bytes())
        assert identity.cert_matches_key(cert, key)
        assert identity.device_id_for(key.public_key()) == device_id
        assert json.loads((ident_dir / "identity.json").read_text())["device_id"] == device_id
        assert not list(a.state_dir.glob(".identity.*"))
    assert len(hub.devices()) == 8
