"""Bootstrap CIs: exact statistics (vs pycocoevalcap and clinical_efficacy), coverage, paired tests."""
from __future__ import annotations

import numpy as np
import pytest

from xraygpt.evaluation.bootstrap import (
    CiderMetric,
    bleu_metrics,
    bootstrap_intervals,
    clinical_metrics,
    mean_metric,
    paired_test,
    resample_weights,
    vqa_metric_set,
)
from xraygpt.evaluation.chexpert_labeler import label_reports
from xraygpt.evaluation.clinical_efficacy import clinical_efficacy
from xraygpt.evaluation.report_metrics import fallback_tokenize

REFS = [
    "No pleural effusion. Heart size is normal.",
    "There is a large right pleural effusion with adjacent atelectasis.",
    "Cardiomegaly. No pneumothorax.",
    "Small left pleural effusion. Mild cardiomegaly.",
    "Lungs are clear. No acute cardiopulmonary abnormality.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "No focal consolidation, pleural effusion or pneumothorax.",
    "Mild pulmonary edema and cardiomegaly.",
]
PREDS = [
    "No pleural effusion. Heart size is normal.",
    "There is a right pleural effusion.",
    "Heart is enlarged. No pneumothorax.",
    "No pleural effusion. Mild cardiomegaly.",
    "Lungs are clear.",
    "Right lower lobe pneumonia.",
    "No pleural effusion or pneumothorax.",
    "Cardiomegaly with mild edema.",
]


def _tok(texts):
    return {i: [fallback_tokenize(t)] for i, t in enumerate(texts)}


def test_bleu_and_cider_statistics_reproduce_pycocoevalcap_on_the_set_and_on_a_resample():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts, res = _tok(REFS), _tok(PREDS)
    bleu, cider = bleu_metrics(gts, res), CiderMetric(gts, res)
    ones = np.ones((1, len(REFS)))
    expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected_cider, expected_each = Cider().compute_score(gts, res)
    assert [float(bleu[f"BLEU-{k}"].values(ones)[0]) for k in range(1, 5)] == pytest.approx(expected_bleu, rel=1e-9)
    assert cider.values(ones)[0] == pytest.approx(expected_cider, rel=1e-9)
    assert cider.sample_scores(ones)[0] == pytest.approx(expected_each, rel=1e-9)
    # A resample with duplicates is the same as scoring the materialised corpus (idf recomputed).
    weights = resample_weights(range(len(REFS)), 3, seed=4)[2:3]
    idx = np.repeat(np.arange(len(REFS)), weights[0].astype(int))
    g2, r2 = {j: gts[i] for j, i in enumerate(idx)}, {j: res[i] for j, i in enumerate(idx)}
    assert cider.values(weights)[0] == pytest.approx(Cider().compute_score(g2, r2)[0], rel=1e-9)
    assert bleu["BLEU-4"].values(weights)[0] == pytest.approx(Bleu(4).compute_score(g2, r2, verbose=0)[0][3], rel=1e-9)


def test_clinical_statistics_match_clinical_efficacy():
    pred, ref = label_reports(PREDS), label_reports(REFS)
    for policy in ("negative", "positive", "ignore"):
        expected = clinical_efficacy(pred, ref, uncertain=policy)
        metrics = clinical_metrics(pred, ref, policy)
        ones = np.ones((1, len(REFS)))
        for avg in ("micro", "macro"):
            for key in ("precision", "recall", "f1"):
                got = metrics[f"CE_{avg}_{key}"].values(ones)[0]
                want = expected[avg][key]
                assert (np.isnan(got) and want is None) or got == pytest.approx(want), (policy, avg, key)
        for obs, stats in expected["per_observation"].items():
            got = metrics[f"CE_f1/{obs}"].values(ones)[0]
            assert (np.isnan(got) and stats["f1"] is None) or got == pytest.approx(stats["f1"]), (policy, obs)


def test_percentile_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    true_mean, trials, covered = 0.3, 300, 0
    for t in range(trials):
        sample = rng.binomial(1, true_mean, size=80).astype(float)
        ci = bootstrap_intervals({"m": mean_metric(sample)}, list(range(80)), resamples=400, seed=t)["m"]
        covered += ci["low"] <= true_mean <= ci["high"]
    # Percentile intervals of a mean run slightly narrow at n=80: 0.90-0.99 is what a correct
    # implementation gives (a wrong level, or resampling the wrong axis, lands far outside).
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_intervals_are_seeded_and_bracket_the_value():
    sample = np.linspace(0, 1, 50)
    a = bootstrap_intervals({"m": mean_metric(sample)}, list(range(50)), resamples=200, seed=7)["m"]
    b = bootstrap_intervals({"m": mean_metric(sample)}, list(range(50)), resamples=200, seed=7)["m"]
    assert a == b and a["value"] == pytest.approx(0.5) and a["low"] < 0.5 < a["high"]


def test_resampling_is_over_studies():
    weights = resample_weights(["s1", "s1", "s2", "s3"], resamples=50, seed=0)
    assert np.all(weights[:, 0] == weights[:, 1])  # two images of one study travel together
    assert np.all(weights.sum(axis=1) - weights[:, 0] - weights[:, 1] == weights[:, 2] + weights[:, 3])


def test_paired_test_on_a_known_difference_and_on_identical_runs():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    shifted = base + 0.05 + rng.normal(0, 0.02, size=200)
    groups = list(range(200))
    out = paired_test({"m": mean_metric(shifted)}, {"m": mean_metric(base)}, groups, resamples=500,
                      permutations=2000, seed=1)["m"]
    assert out["diff"] == pytest.approx(np.mean(shifted - base))
    assert out["low"] < 0.05 < out["high"] and out["high"] - out["low"] < 0.02
    assert out["p_value"] == pytest.approx(1 / 2001)  # no permutation reaches the observed difference
    same = paired_test({"m": mean_metric(base)}, {"m": mean_metric(base)}, groups, permutations=500)["m"]
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["low"] == same["high"] == 0


def test_paired_test_of_corpus_metrics():
    gts = _tok(REFS)
    a = {"BLEU-4": bleu_metrics(gts, _tok(PREDS))["BLEU-4"], "CIDEr": CiderMetric(gts, _tok(PREDS))}
    b = {"BLEU-4": bleu_metrics(gts, _tok(REFS))["BLEU-4"], "CIDEr": CiderMetric(gts, _tok(REFS))}
    out = paired_test(a, b, list(range(len(REFS))), resamples=200, permutations=500)
    from pycocoevalcap.cider.cider import Cider

    assert out["CIDEr"]["b"] == pytest.approx(Cider().compute_score(gts, gts)[0]) and out["CIDEr"]["diff"] < 0
    assert out["BLEU-4"]["b"] == pytest.approx(1.0, abs=1e-6) and out["BLEU-4"]["high"] <= 0
    assert 0 < out["CIDEr"]["p_value"] <= 1


def test_vqa_metric_set():
    items = [{"type": "closed", "score": 1.0}, {"type": "closed", "score": 0.0},
             {"type": "open", "score": 0.5, "exact": 0.0}, {"type": "open", "score": 1.0, "exact": 1.0}]
    ones = np.ones((1, 4))
    m = vqa_metric_set(items)
    assert m["VQA_closed_accuracy"].values(ones)[0] == 0.5
    assert m["VQA_open_token_f1"].values(ones)[0] == 0.75 and m["VQA_open_exact_match"].values(ones)[0] == 0.5


def test_meteor_interval_is_placed_around_the_corpus_score_it_is_printed_with():
    from xraygpt.evaluation.scoring import _center_meteor_interval

    intervals = {"METEOR": {"value": 0.36, "low": 0.3465, "high": 0.3788}, "ROUGE-L": {"value": 0.6, "low": 0.5, "high": 0.7}}
    _center_meteor_interval(intervals, 0.34)
    meteor = intervals["METEOR"]
    assert meteor["value"] == 0.34 and meteor["segment_mean"] == 0.36
    assert meteor["low"] < 0.34 < meteor["high"]
    assert abs((meteor["high"] - meteor["low"]) - (0.3788 - 0.3465)) < 1e-12
    assert intervals["ROUGE-L"] == {"value": 0.6, "low": 0.5, "high": 0.7}
