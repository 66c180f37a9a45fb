"""Agreement of our labeler with the real CheXpert labeler on the shared development reports."""
from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED
from xraygpt.common.errors import DataError
from xraygpt.evaluation import chexpert_labeler as L
from xraygpt.evaluation.labeler_agreement import agreement, load_labelled_reports, score_file, split_of

DEV = SHARED / "sample_data" / "labeler_dev" / "reports.jsonl"
needs_dev = pytest.mark.skipif(not DEV.is_file(), reason=f"{DEV} not present")
TARGET = 0.85


@needs_dev
def test_dev_set_macro_f1_reaches_the_target():
    result = score_file(DEV)
    assert result["n"] == 718
    assert result["u_ones"]["macro"] >= TARGET, result["u_ones"]["per_observation"]
    # Strict and mention agreement are reported too; they must not collapse either.
    assert result["strict"]["macro"] >= 0.70
    assert result["mention"]["macro"] >= 0.90


@needs_dev
def test_holdout_third_stays_close_to_the_develop_part():
    develop, holdout = score_file(DEV, "develop"), score_file(DEV, "holdout")
    assert develop["n"] + holdout["n"] == 718 and holdout["n"] > 150
    assert holdout["u_ones"]["macro"] >= develop["u_ones"]["macro"] - 0.05
    assert holdout["u_ones"]["micro"] >= 0.80


@needs_dev
def test_trigger_prefilter_changes_no_label():
    """The literal triggers only skip regexes that cannot match: same mentions with and without them."""
    for row in load_labelled_reports(DEV):
        for clause in L._clauses(L.normalise_report(row["text"])):
            assert L._clause_mentions(clause, True) == L._clause_mentions(clause, False), clause


def test_agreement_counts_views_separately():
    ref = [{"Edema": -1, "Cardiomegaly": 1}, {"Edema": 0, "Cardiomegaly": None}]
    pred = [{"Edema": 1, "Cardiomegaly": 1}, {"Edema": None, "Cardiomegaly": 0}]
    out = agreement(pred, ref, observations=("Edema", "Cardiomegaly"))
    assert out["u_ones"]["per_observation"] == {"Edema": 1.0, "Cardiomegaly": 1.0}
    assert out["strict"]["per_observation"] == {"Edema": 0.0, "Cardiomegaly": 1.0}
    # Mention: Edema is mentioned in both reports by the reference but only in the first by us.
    assert out["mention"]["counts"]["Edema"] == {"tp": 1, "fp": 0, "fn": 1}
    assert out["mention"]["counts"]["Cardiomegaly"] == {"tp": 1, "fp": 1, "fn": 0}
    assert out["strict"]["macro"] == 0.5 and out["strict"]["micro"] == pytest.approx(2 / 3)


def test_split_is_deterministic_and_about_a_third():
    ids = [f"r{i}" for i in range(3000)]
    share = sum(split_of(i) == "holdout" for i in ids) / len(ids)
    assert 0.30 < share < 0.37 and [split_of(i) for i in ids[:50]] == [split_of(i) for i in ids[:50]]


def test_bad_jsonl_line_is_one_data_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "x", "labels": {}}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"r.jsonl:2: expected JSON with id, text and labels"):
        load_labelled_reports(path)
    with pytest.raises(DataError, match="labelled reports not found"):
        load_labelled_reports(tmp_path / "missing.jsonl")
