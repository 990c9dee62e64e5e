"""The hub takes a device's reported state only when it fits the contract and names its sender."""

import json

import pytest
from pydantic import ValidationError

from appliance.payloads import ReportedState

GOOD = {"device_id": "dev-1", "software_version": "0.1.0", "provisioning": "enrolled",
        "labels": {"site": "bridge-17"}, "started_at": 1.0, "seq": 5,
        "model": {"name": "m", "version": "1.0.0", "state": "committed"}}


def test_a_state_from_a_newer_appliance_keeps_the_fields_the_hub_does_not_know() -> None:
    state = ReportedState.model_validate_json(json.dumps(GOOD | {"os": {"version": "2"}}))
    assert state.model_dump(mode="json")["os"] == {"version": "2"}


@pytest.mark.parametrize("bad", [
    [], {"id": 1}, GOOD | {"seq": True}, GOOD | {"seq": -1}, GOOD | {"labels": ["a"]},
    GOOD | {"model": {"state": "dancing"}},
], ids=["list", "missing-fields", "bool-seq", "negative-seq", "labels-not-a-map",
        "unknown-model-state"])
def test_a_state_that_does_not_fit_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        ReportedState.model_validate_json(json.dumps(bad))
