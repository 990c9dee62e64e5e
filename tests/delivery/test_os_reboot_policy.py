"""When a staged OS version may be booted: the pure decision, one rule per test."""

import datetime as dt

import pytest

from appliance.errors import ConfigError
from daemon.osupdate.reboot import may_reboot, parse_window

NIGHT = parse_window("02:00-05:00")


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, 2, hour, minute)


def test_inside_the_window_with_nothing_running_reboots():
    assert may_reboot(at(3), NIGHT, finetune_running=False, uplink_queue=0).allowed


def test_outside_the_window_waits():
    decision = may_reboot(at(12), NIGHT, finetune_running=False, uplink_queue=0)
    assert not decision.allowed and "outside the reboot window 02:00-05:00" in decision.reason


def test_the_window_end_is_exclusive():
    assert not may_reboot(at(5), NIGHT, finetune_running=False, uplink_queue=0).allowed


def test_a_running_fine_tune_job_holds_the_reboot():
    decision = may_reboot(at(3), NIGHT, finetune_running=True, uplink_queue=0)
    assert not decision.allowed and "fine-tune" in decision.reason


def test_a_non_empty_uplink_queue_holds_the_reboot():
    decision = may_reboot(at(3), NIGHT, finetune_running=False, uplink_queue=4)
    assert not decision.allowed and "4 images" in decision.reason


def test_a_window_may_wrap_past_midnight():
    late = parse_window("23:00-01:30")
    assert may_reboot(at(0, 45), late, finetune_running=False, uplink_queue=0).allowed
    assert may_reboot(at(23, 5), late, finetune_running=False, uplink_queue=0).allowed
    assert not may_reboot(at(2), late, finetune_running=False, uplink_queue=0).allowed


def test_a_malformed_window_is_refused():
    with pytest.raises(ConfigError, match="not HH:MM-HH:MM"):
        parse_window("2am-5am")


def test_an_empty_window_is_refused():
    with pytest.raises(ConfigError, match="is empty"):
        parse_window("03:00-03:00")
