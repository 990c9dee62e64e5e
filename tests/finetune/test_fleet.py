"""Through real processes: a hub and an appliance; samples imported with the CLI; the hub starts
a fine-tune over the device's command topic; progress and outcome come back as events; the
promoted model shows in the reported state; then `spoke finetune start --wait` on site."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.support.fleet import Appliance, Hub, cli, wait_for

pytestmark = pytest.mark.slow

ENV = {
    "SPOKE_MODELS__BACKEND": "onnxruntime",
    "SPOKE_MODELS__GATE_QUIET_S": "1",
    "SPOKE_MODELS__RETRY_INITIAL_S": "0.5",
    "SPOKE_FINETUNE__MARGIN": "0",
    "SPOKE_FINETUNE__MAX_LABEL_DROP": "1",
    "SPOKE_FINETUNE__NICENESS": "5",
    "SPOKE_FINETUNE__UPLOAD": "weights",
}
POLICY = """
[[rule]]
name = "site"
selector = "site=bridge-17"
model = "crack-vit"
version = "==1.0.0"
"""


def test_the_hub_fine_tunes_a_site_model_without_its_images_leaving(
    tmp_path: Path, parent_artifact: Path, site_tiles: Path
) -> None:
    hub = Hub(tmp_path).start()
    hub.publish(parent_artifact)
    hub.apply_policy(POLICY)
    appliance = Appliance(tmp_path, hub).start(hub.bundle(tmp_path / "b.spoke"), env=ENV)
    state = str(appliance.state_dir)
    try:
        device = appliance.wait_enrolled()
        hub.wait_model(device, "1.0.0")
        out = cli("spoke", "samples", "import", str(site_tiles), "--state-dir", state, "--json")
        assert len(json.loads(out.stdout)["added"]) == 32

        answer = cli("spoke-hub", "device", "cmd", "--home", str(hub.home), device, "finetune",
                     "method=linear", "epochs=40", "--json")
        result = json.loads(answer.stdout)
        assert result["ok"] is True, result
        job_id = result["result"]["job"]

        finished = wait_for(lambda: hub.events(device, "finetune_finished"), 120,
                            "the fine-tune outcome at the hub")
        data = finished[0]["data"]
        assert data["job"] == job_id and data["gate"] is True
        assert data["promotion"]["version"] == "1.0.1-ft.1"
        assert hub.events(device, "finetune_progress")
        hub.wait_model(device, "1.0.1-ft.1")
        reported = hub.devices()[device]["state"]["finetune"]
        assert reported["job"] == job_id and reported["version"] == "1.0.1-ft.1"

        reviews = list((hub.home / "finetune-reviews" / device).glob("*.tar.gz"))
        assert len(reviews) == 1
        with tarfile.open(reviews[0]) as tar:  # weights, card, comparison: never an image
            assert sorted(tar.getnames()) == ["card.json", "review.json", "trained.safetensors"]

        local = cli("spoke", "finetune", "start", "--state-dir", state, "--method", "linear",
                    "--epochs", "50", "--wait", check=False)
        assert local.returncode == 0, local.stderr
        assert "evaluation gate" in local.stdout and "macro-F1" in local.stdout
    finally:
        appliance.stop()
        hub.stop()
