"""The pure parts: split, gate, method choice, versioning, signatures, LoRA merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from appliance.errors import IdentityError
from appliance.identity import generate_key, key_to_pem
from daemon.finetune.options import check_options, parse_budget
from daemon.finetune.promote import next_version, sign_statement, verify_signed
from models.finetune.gate import Changes, LabelChanges, compare, label_changes
from models.finetune.methods import merge, prepare
from models.finetune.split import TooFewSamples, stratified_split
from models.training.metrics import Scores

LABELS = ("background", "crack", "rust")


def targets(rows: list[str]) -> np.ndarray:
    return np.array([[1.0 if n in r.split("+") else 0.0 for n in LABELS] for r in rows],
                    dtype=np.float32)


def test_the_split_holds_out_every_label_with_two_or_more_samples():
    y = targets(["background"] * 10 + ["crack"] * 6 + ["rust"] * 2 + ["crack+rust"] * 2)
    train, held = stratified_split(y, LABELS, 0.25, seed=3)
    assert set(train) | set(held) == set(range(len(y))) and not set(train) & set(held)
    for j in range(len(LABELS)):
        assert y[held, j].sum() >= 1 and y[train, j].sum() >= 1


def test_the_split_is_deterministic_for_a_seed():
    y = targets(["background"] * 8 + ["crack"] * 8)
    assert [a.tolist() for a in stratified_split(y, LABELS, seed=1)] == \
        [a.tolist() for a in stratified_split(y, LABELS, seed=1)]


def test_too_few_samples_name_what_is_short():
    with pytest.raises(TooFewSamples, match="at least 8"):
        stratified_split(targets(["crack"] * 5), LABELS)
    with pytest.raises(TooFewSamples, match=r"rust \(1\)"):
        stratified_split(targets(["crack"] * 8 + ["rust"]), LABELS)


def scores(macro: float, **per: float) -> Scores:
    return Scores(dict(per), macro, 0.0)


def test_the_gate_needs_the_margin():
    cur, cand = scores(0.50, crack=0.5), scores(0.52, crack=0.52)
    assert compare(cur, cand, margin=0.01, max_label_drop=0.05).promote
    assert not compare(cur, cand, margin=0.05, max_label_drop=0.05).promote
    assert not compare(cur, scores(0.50, crack=0.5), margin=0.0, max_label_drop=0.05).promote


def test_the_gate_refuses_a_label_that_loses_too_much():
    cur = scores(0.50, crack=0.6, rust=0.4)
    cand = scores(0.60, crack=0.5, rust=0.7)
    result = compare(cur, cand, margin=0.01, max_label_drop=0.05)
    assert not result.promote
    assert any("crack loses 0.100" in r for r in result.reasons)
    assert compare(cur, cand, margin=0.01, max_label_drop=0.2).promote



def few(worse: int, better: int = 0) -> dict[str, LabelChanges]:
    """Changes of ``crack`` on the samples that carry it; none on the others."""
    return {"crack": LabelChanges(Changes(worse, better), Changes(0, 0))}


def test_mcnemar_p_value_is_the_exact_one_sided_binomial_tail():
    assert Changes(3, 1).p_value == 5 / 16
    assert Changes(0, 0).p_value == 1.0
    assert Changes(5, 0).p_value == 1 / 32


def test_a_label_drop_within_the_noise_of_few_held_out_samples_does_not_refuse():
    cur = scores(0.50, crack=0.6, rust=0.4)
    cand = scores(0.60, crack=0.5, rust=0.7)
    result = compare(cur, cand, margin=0.01, max_label_drop=0.05, changes=few(2))
    assert result.promote
    assert any("crack loses 0.100 F1, within noise" in r and "p=0.25" in r
               for r in result.reasons)


def test_a_significant_label_drop_still_refuses():
    cur = scores(0.50, crack=0.6, rust=0.4)
    cand = scores(0.60, crack=0.5, rust=0.7)
    result = compare(cur, cand, margin=0.01, max_label_drop=0.05, changes=few(6, 0))
    assert not result.promote
    assert any("crack loses 0.100 F1 (at most" in r for r in result.reasons)


def test_new_false_alarms_count_as_much_as_missed_defects():
    cur = scores(0.50, crack=0.6, rust=0.4)
    cand = scores(0.60, crack=0.5, rust=0.7)
    alarms = {"crack": LabelChanges(Changes(0, 1), Changes(7, 0))}
    assert not compare(cur, cand, margin=0.01, max_label_drop=0.05, changes=alarms).promote


def test_a_label_the_candidate_no_longer_finds_is_refused_however_few_the_samples():
    cur = scores(0.50, crack=0.3, rust=0.4)
    cand = scores(0.60, crack=0.0, rust=0.9)
    assert not compare(cur, cand, margin=0.01, max_label_drop=0.05, changes=few(1)).promote


def test_label_changes_split_positives_from_negatives():
    truth = targets(["crack", "crack", "crack", "background", "background"])
    before = targets(["crack", "crack", "background", "background", "crack"])
    after = targets(["crack", "background", "crack", "crack", "background"])
    crack = label_changes(before, after, truth, LABELS)["crack"]
    assert crack == LabelChanges(positives=Changes(1, 1), negatives=Changes(1, 1))


def test_versions_are_bumped_with_a_local_suffix():
    assert next_version("1.2.0") == "1.2.1-ft.1"
    assert next_version("1.2.1-ft.1") == "1.2.1-ft.2"
    assert next_version("1.2.0", taken=["1.2.1-ft.1"]) == "1.2.1-ft.2"
    assert next_version("2.0.0-rc.1") == "2.0.1-ft.1"


def test_a_tampered_statement_fails_the_signature():
    signed = sign_statement(key_to_pem(generate_key()), {"version": "1.0.1-ft.1"})
    assert verify_signed(signed)["version"] == "1.0.1-ft.1"
    signed["statement"] = {"version": "9.9.9"}
    with pytest.raises(IdentityError):
        verify_signed(signed)


def test_options_are_validated():
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget(30) == 30
    with pytest.raises(Exception, match="budget"):
        parse_budget("ten minutes")
    with pytest.raises(Exception, match="method"):
        check_options({"method": "magic"})
    with pytest.raises(Exception, match="unknown"):
        check_options({"lr": 1})


def test_lora_merges_into_a_plain_vit_with_the_same_output():
    from models.config import tiny_config
    from models.vit import VisionTransformer, build_model

    model = build_model(tiny_config(), seed=0)
    prepare(model, "lora", seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge(model)
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    plain = VisionTransformer(model.cfg)
    plain.load_state_dict(model.state_dict())
