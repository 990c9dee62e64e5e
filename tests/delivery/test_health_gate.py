"""`spoke health-gate` (what spoke-health.service runs before boot-complete.target) against a
real hub and a real daemon: it passes on a healthy box and names the first thing that is not."""

import json
from pathlib import Path

import pytest

from tests.delivery.test_end_to_end import MODEL_ENV, POLICY
from tests.support.fleet import Appliance, Hub, cli, wait_for
from tests.support.osrelease import make_release

pytestmark = pytest.mark.slow


def gate(appliance: Appliance, grace_s: int = 900) -> tuple[int, dict[str, object]]:
    proc = cli("spoke", "health-gate", "--state-dir", str(appliance.state_dir), "--json",
               check=False, env={"SPOKE_OS__HUB_GRACE_S": str(grace_s)})
    return proc.returncode, json.loads(proc.stdout)


def test_the_gate_passes_on_a_healthy_box_then_names_what_broke(
        tmp_path: Path, artifacts: dict[str, Path]):
    hub = Hub(tmp_path).start()
    appliance = Appliance(tmp_path, hub)
    try:
        code, verdict = gate(appliance)
        assert code == 1 and verdict["reason"] == "the daemon is not READY"

        hub.publish(artifacts["1.0.0"])
        hub.apply_policy(POLICY.replace(">=1.0,<2", "==1.0.0"))
        appliance.start(hub.bundle(tmp_path / "b.spoke"), env=MODEL_ENV)
        device = appliance.wait_enrolled()
        hub.wait_model(device, "1.0.0")
        code, verdict = gate(appliance)
        assert (code, verdict["ok"]) == (0, True), verdict
        assert verdict["reason"] == "healthy: crack-vit@1.0.0 serves"
        saved = json.loads((appliance.state_dir / "os" / "health.json").read_text())
        assert saved["ok"] is True

        # An OS version published on the hub reaches the daemon as its desired OS. This host is
        # not a Spoke image (no IMAGE_ID=spoke), so it reports that and stages nothing.
        cli("spoke-hub", "os", "publish", "--home", str(hub.home),
            str(make_release(tmp_path / "os2", "2")))
        hub.apply_policy(POLICY.replace(">=1.0,<2", "==1.0.0") + 'os_version = ">=2"\n')
        reported = wait_for(
            lambda: ((hub.devices()[device].get("state") or {}).get("os") or {}).get("desired")
            == "2" and hub.devices()[device]["state"]["os"], 60, "the desired OS version")
        assert (reported["state"], reported["staged"]) == ("not-an-image", None)
        assert not (appliance.state_dir / "os" / "source").exists()

        hub.stop()
        wait_for(lambda: not appliance.status()["hub"]["connected"] or None, 60,
                 "the daemon to see the hub gone")
        code, verdict = gate(appliance, grace_s=900)
        assert code == 0, "a hub outage within the grace must not fail the boot"
        wait_for(lambda: gate(appliance, grace_s=1)[0] == 1 or None, 30, "the grace to pass")
        code, verdict = gate(appliance, grace_s=1)
        assert str(verdict["reason"]).startswith("hub unreachable for ")
        saved = json.loads((appliance.state_dir / "os" / "health.json").read_text())
        assert saved["ok"] is False and saved["reason"] == verdict["reason"]

        # A box that boots with the hub down has not reached it once in this daemon run.
        appliance.stop()
        appliance.start(env=MODEL_ENV)
        wait_for(lambda: gate(appliance, grace_s=1)[1]["reason"] != "the daemon is not READY"
                 or None, 60, "the daemon to be READY again")
        code, verdict = gate(appliance, grace_s=1)
        assert (code, verdict["reason"]) == (
            1, "hub not reached since the daemon started (grace 1 s)")
    finally:
        appliance.stop()
        hub.stop()
