"""Publish to active through real processes: a hub with its managed mosquitto and HTTPS
repository, and an appliance that provisions itself, pulls, verifies and activates."""

from pathlib import Path

import pytest

from tests.support.fleet import Appliance, Hub, cli, wait_for

pytestmark = pytest.mark.slow

MODEL_ENV = {
    "SPOKE_MODELS__BACKEND": "onnxruntime",
    "SPOKE_MODELS__GATE_QUIET_S": "1",
    "SPOKE_MODELS__RETRY_INITIAL_S": "0.5",
    "SPOKE_MODELS__RETRY_CAP_S": "2",
}

POLICY = """
[[rule]]
name = "bridges"
selector = "site in (bridge-17, bridge-18), region!=south"
model = "crack-vit"
version = ">=1.0,<2"
"""


def test_publish_rollout_and_tampered_bytes_end_to_end(
    tmp_path: Path, artifacts: dict[str, Path]
):
    """One fleet for three steps (real processes are the expensive part): the published model
    reaches the appliance; a new version rolls out; bytes tampered with on the hub are refused
    and the refusal is reported, with the active model untouched."""
    hub = Hub(tmp_path).start()
    hub.publish(artifacts["1.0.0"])
    hub.apply_policy(POLICY.replace(">=1.0,<2", "==1.0.0"))
    appliance = Appliance(tmp_path, hub).start(hub.bundle(tmp_path / "b.spoke"), env=MODEL_ENV)
    try:
        device = appliance.wait_enrolled()
        hub.wait_model(device, "1.0.0")
        assert hub.devices()[device]["desired_model"] == "crack-vit@1.0.0"

        hub.publish(artifacts["1.1.0"])
        hub.apply_policy(POLICY)
        hub.wait_model(device, "1.1.0")
        info = appliance.models()
        assert info["active"]["version"] == "1.1.0"
        assert [m["version"] for m in info["entries"]] == ["1.0.0", "1.1.0"]
        assert len(hub.events(device, "model_committed")) == 2

        hub.apply_policy(POLICY.replace(">=1.0,<2", ">=1.0,<2,!=2.0.0"))
        row = hub.publish(artifacts["2.0.0"])
        served = hub.target_file(row)
        data = bytearray(served.read_bytes())
        data[len(data) // 2] ^= 0xFF
        served.write_bytes(bytes(data))
        hub.apply_policy(POLICY.replace("<2", "<3"))
        refused = wait_for(lambda: hub.events(device, "model_refused"), 60, "the refusal")
        assert refused[0]["data"]["code"] == "hash-mismatch"
        # The appliance retries a refused download (the hub may be repaired), and a retry that
        # times out on a loaded machine reports hub-unreachable in between: wait for the refusal.
        model = wait_for(
            lambda: ((m := hub.device_model(device)).get("last_error") or {}).get("code")
            == "hash-mismatch" and m,
            60, "the refusal in the reported state",
        )
        assert model["version"] == "1.1.0"
        assert appliance.models()["active"]["version"] == "1.1.0"
        print(cli("spoke-hub", "devices", "--home", str(hub.home)).stdout)
    finally:
        appliance.stop()
        hub.stop()
