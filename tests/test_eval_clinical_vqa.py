"""Clinical efficacy counts and averages by hand; VQA exact match and token F1."""
from __future__ import annotations

import pytest

from xraygpt.evaluation.clinical_efficacy import binarize, clinical_efficacy, report_clinical_efficacy
from xraygpt.evaluation.vqa_metrics import closed_answer, score_vqa, token_f1

OBS = ("Cardiomegaly", "Edema", "Pneumothorax")
# Cardiomegaly: pred 1,1,0,-1 vs ref 1,0,1,1 ; Edema: pred -1,0,0,0 vs ref 1,0,0,0 ; Pneumothorax: nobody positive.
PRED = [{"Cardiomegaly": 1, "Edema": -1}, {"Cardiomegaly": 1}, {"Cardiomegaly": 0}, {"Cardiomegaly": -1}]
REF = [{"Cardiomegaly": 1, "Edema": 1}, {"Cardiomegaly": 0}, {"Cardiomegaly": 1}, {"Cardiomegaly": 1, "Pneumothorax": 0}]


def test_uncertain_as_negative():
    ce = clinical_efficacy(PRED, REF, observations=OBS, uncertain="negative")
    cm = ce["per_observation"]["Cardiomegaly"]
    assert (cm["tp"], cm["fp"], cm["fn"], cm["tn"]) == (1, 1, 2, 0)
    assert cm["precision"] == pytest.approx(1 / 2) and cm["recall"] == pytest.approx(1 / 3)
    assert cm["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    edema = ce["per_observation"]["Edema"]
    assert (edema["tp"], edema["fn"], edema["f1"], edema["precision"]) == (0, 1, 0.0, None)
    assert ce["per_observation"]["Pneumothorax"]["f1"] is None  # nobody positive: left out of macro
    assert ce["macro_over"] == ["Cardiomegaly", "Edema"]
    assert ce["macro"]["f1"] == pytest.approx((0.4 + 0.0) / 2)
    assert ce["macro"]["precision"] == pytest.approx(0.5)  # Edema precision undefined -> not averaged
    # micro pools tp=1, fp=1, fn=3
    assert ce["micro"]["precision"] == pytest.approx(1 / 2)
    assert ce["micro"]["recall"] == pytest.approx(1 / 4)
    assert ce["micro"]["f1"] == pytest.approx(2 / (2 + 1 + 3))


def test_uncertain_as_positive_and_ignored():
    ones = clinical_efficacy(PRED, REF, observations=OBS, uncertain="positive")
    cm = ones["per_observation"]["Cardiomegaly"]
    assert (cm["tp"], cm["fp"], cm["fn"]) == (2, 1, 1)
    assert ones["per_observation"]["Edema"]["tp"] == 1
    ignored = clinical_efficacy(PRED, REF, observations=OBS, uncertain="ignore")
    cm = ignored["per_observation"]["Cardiomegaly"]
    assert cm["tp"] + cm["fp"] + cm["fn"] + cm["tn"] == 3  # sample 4 (pred uncertain) left out
    assert ignored["per_observation"]["Edema"]["tp"] + ignored["per_observation"]["Edema"]["fn"] == 0


def test_binarize_and_errors():
    assert [binarize(v) for v in (1, 0, -1, None)] == [1, 0, 0, 0]
    assert binarize(-1, "positive") == 1 and binarize(-1, "ignore") is None
    with pytest.raises(ValueError, match="uncertain must be"):
        clinical_efficacy(PRED, REF, uncertain="maybe")
    with pytest.raises(ValueError, match="4 predicted label sets but 1"):
        clinical_efficacy(PRED, REF[:1])


def test_report_clinical_efficacy_labels_text():
    ce = report_clinical_efficacy(
        ["No pleural effusion.", "Large right pleural effusion.", "Cardiomegaly."],
        ["Small left pleural effusion.", "Right pleural effusion.", "Heart size normal."],
    )
    pe = ce["per_observation"]["Pleural Effusion"]
    assert (pe["tp"], pe["fn"], pe["fp"]) == (1, 1, 0)
    assert ce["per_observation"]["Cardiomegaly"]["fp"] == 1


def test_closed_answers_read_leading_yes_no():
    assert closed_answer("Yes, there is a small effusion.") == "yes"
    assert closed_answer("no.") == "no"
    assert closed_answer("There is an effusion") is None


def test_token_f1_hand_values():
    # pred {left, lower, lobe} vs ref {right, lower, lobe} after dropping "the": P = R = 2/3
    assert token_f1("The left lower lobe", "right lower lobe") == pytest.approx(2 / 3)
    assert token_f1("CT", "ct.") == 1.0
    assert token_f1("", "lung") == 0.0


def test_score_vqa_splits_closed_and_open():
    result = score_vqa(
        ["Yes, it is enlarged.", "No", "left lower lobe", "MRI"],
        ["yes", "yes", "the right lower lobe", "CT"],
    )
    assert result["n_closed"] == 2 and result["closed_accuracy"] == pytest.approx(0.5)
    assert result["n_open"] == 2 and result["open_token_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["open_exact_match"] == 0.0
    assert [item["type"] for item in result["per_item"]] == ["closed", "closed", "open", "open"]
    with pytest.raises(ValueError, match="2 answers but 1"):
        score_vqa(["a", "b"], ["a"])


def test_sentence_answers_starting_with_yes_or_no_are_closed():
    result = score_vqa(
        ["No, there is no pleural effusion.", "No, there is no pneumothorax.", "The heart is enlarged."],
        ["No, there is no pleural effusion.", "Yes, there is a small right pneumothorax.", "The heart size is normal."],
    )
    assert result["n_closed"] == 2 and result["closed_accuracy"] == pytest.approx(0.5)
    assert result["n_open"] == 1
