"""The model journal as a pure state machine: each rule, with the time passed in."""

from appliance.delivery import DesiredModel, DesiredState
from daemon.delivery.gate import HealthGate
from daemon.delivery.journal import Journal, Phase, Refusal


def _desired(version: str) -> DesiredState:
    return DesiredState(model=DesiredModel(name="m", version=version,
                                           target=f"models/m/{version}.tar"))


def test_a_new_desired_state_ends_an_operators_hold() -> None:
    journal = Journal()
    journal.desire(_desired("1.0.0"))
    journal.hold_at("aa", "activate", now=10.0)
    assert journal.held()
    assert journal.desire(_desired("1.0.0")) is False and journal.held()
    assert journal.desire(_desired("1.1.0")) is True
    assert journal.hold is None and not journal.held()


def test_probation_commits_and_clears_the_last_error() -> None:
    journal = Journal(last_error=Refusal(code="smoke-test", reason="x", ts=1.0))
    journal.activate("bb", previous="aa", reason="desired", now=2.0)
    assert journal.phase(serving=True) is Phase.PROBATION
    journal.commit("bb", now=3.0)
    assert (journal.committed, journal.probation, journal.last_error) == ("bb", None, None)
    assert journal.phase(serving=True) is Phase.COMMITTED
    assert [e.event for e in journal.history] == ["activate", "commit"]


def test_a_rollback_returns_to_the_model_the_probation_replaced() -> None:
    journal = Journal(committed="aa")
    journal.activate("bb", previous="aa", reason="desired", now=1.0)
    assert journal.rollback_target(previous_link="zz") == "aa"
    journal.rolled_back("bb", "aa", "gate failed", now=2.0)
    assert (journal.committed, journal.probation) == ("aa", None)


def test_a_final_refusal_stands_only_for_the_desired_state_it_answered() -> None:
    journal = Journal()
    wanted = _desired("1.1.0").model
    assert wanted is not None
    refusal = Refusal(code="smoke-test", reason="bad", sha256="cc", ts=1.0, final=True,
                      desired=wanted)
    assert journal.refuse(refusal, "model_refused", now=1.0) is True
    assert journal.refused_for_good("cc", wanted)
    other = _desired("1.2.0").model
    assert other is not None and not journal.refused_for_good("cc", other)


def test_the_same_failure_again_is_not_news() -> None:
    journal = Journal()
    first = Refusal(code="hub-unreachable", reason="a", version="1.1.0", ts=1.0)
    again = Refusal(code="hub-unreachable", reason="b", version="1.1.0", ts=2.0)
    assert journal.refuse(first, "model_interrupted", now=1.0) is True
    assert journal.refuse(again, "model_interrupted", now=2.0) is False


def test_history_keeps_only_the_newest_events() -> None:
    journal = Journal()
    for i in range(60):
        journal.note("activate", now=float(i))
    assert len(journal.history) == 50 and journal.history[0].ts == 10.0


def test_a_state_file_of_the_previous_layout_still_loads() -> None:
    old = ('{"committed": "aa", "probation": {"sha256": "bb", "previous": "aa", "since": 1.0,'
           ' "reason": "r"}, "desired": null, "refused": {}, "hold": null, "last_error": null,'
           ' "history": [{"ts": 1.0, "event": "activate", "sha256": "bb"}]}')
    journal = Journal.model_validate_json(old)
    assert journal.probation is not None and journal.probation.previous == "aa"


def test_the_quiet_gate_passes_on_the_clock_it_is_given() -> None:
    gate = HealthGate(started=100.0, good_needed=50, quiet_s=30.0, max_errors=3)
    assert gate.verdict(now=129.0) is None
    assert gate.verdict(now=130.0) == "pass"
