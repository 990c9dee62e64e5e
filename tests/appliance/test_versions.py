"""One version order for hub and appliance."""

from appliance.versions import version_key
from daemon.delivery.gate import downgrade_refusal
from provisioning.placement import parse_constraint


def test_a_missing_patch_number_orders_like_zero() -> None:
    assert version_key("1.0") == version_key("1.0.0")


def test_the_appliance_does_not_call_1_0_a_downgrade_from_1_0_0_when_pinned_or_not() -> None:
    assert downgrade_refusal("1.0", committed="1.0.0", pinned=False) is None


def test_the_hub_places_1_0_0_under_a_rule_that_asks_for_1_0() -> None:
    assert parse_constraint("==1.0").allows("1.0.0")


def test_numbers_order_numerically_and_pre_releases_before_releases() -> None:
    assert version_key("1.10.0") > version_key("1.9.0")
    assert version_key("2.0.0-rc.1") < version_key("2.0.0")
