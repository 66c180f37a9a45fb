"""Report metrics against hand computations and independent formulas (pycocoevalcap semantics)."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from xraygpt.evaluation import report_metrics
from xraygpt.evaluation.report_metrics import JavaNotFoundError, compute_report_metrics, fallback_tokenize

# Realistic reports; after PTB tokenization (lower case, punctuation dropped) their tokens are the
# whitespace tokens of the lower-cased text without '.' and ','.
PREDICTIONS = [
    "The heart is normal in size. No pleural effusion.",
    "Normal chest x-XXXX.",
    "There is a large right pleural effusion.",
    "",
]
REFERENCES = [
    "The heart size is normal. There is no pleural effusion.",
    "Normal chest x-XXXX.",
    "Small left pleural effusion, no pneumothorax.",
    "No acute cardiopulmonary abnormality.",
]


def _tokens(text: str) -> list[str]:
    return text.lower().replace(".", " ").replace(",", " ").split()


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def independent_corpus_bleu(hyps, refs, max_n):
    """Papineni et al.: clipped n-gram precisions pooled over the corpus, geometric mean, brevity penalty."""
    correct, guess = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs):
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            correct[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            guess[n - 1] += max(len(h) - n + 1, 0)
    log_p = sum(math.log(c / g) for c, g in zip(correct, guess)) / max_n
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def independent_rouge_l(hyp, ref, beta=1.2):
    common = lcs(hyp, ref)
    if common == 0:
        return 0.0
    p, r = common / len(hyp), common / len(ref)
    return (1 + beta**2) * p * r / (r + beta**2 * p)


@pytest.fixture(scope="module")
def java_scores():
    """One PTB + METEOR run (the JVMs take ~30 s to start) shared by the tests below."""
    if not report_metrics.java_available():
        pytest.skip("java not installed")
    return compute_report_metrics(PREDICTIONS, REFERENCES, java="require")


def test_ptb_tokenization_matches_pycocoevalcap_wrapper():
    if not report_metrics.java_available():
        pytest.skip("java not installed")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = {0: ["Normal chest x-XXXX.", "No (small) effusion, 4.7 cm; don't"], 1: [""], 2: [PREDICTIONS[0]]}
    ours = report_metrics._ptb_tokenize(texts)
    theirs = PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts.items() if k != 1})
    assert ours == {**theirs, 1: [""]}
    assert ours[0][1] == "no -lrb- small -rrb- effusion 4.7 cm do n't"


def test_bleu_matches_independent_formula(java_scores):
    hyps, refs = [_tokens(p) for p in PREDICTIONS], [_tokens(r) for r in REFERENCES]
    assert java_scores.tokenizer == "ptb"
    for n in (1, 2, 3):
        expected = independent_corpus_bleu(hyps, refs, n)
        assert java_scores.corpus[f"BLEU-{n}"] == pytest.approx(expected, rel=1e-6)
    # Hand check of BLEU-1: 8+3+2+0 clipped unigram matches of 9+3+7+0 guesses; lengths 19 vs 10+3+6+4.
    assert java_scores.corpus["BLEU-1"] == pytest.approx(13 / 19 * math.exp(1 - 23 / 19), rel=1e-6)


def test_rouge_l_is_mean_lcs_f_score(java_scores):
    expected = [
        independent_rouge_l(_tokens(p), _tokens(r)) if p else 0.0 for p, r in zip(PREDICTIONS, REFERENCES)
    ]
    assert java_scores.per_sample["ROUGE-L"] == pytest.approx(expected, rel=1e-9)
    assert java_scores.corpus["ROUGE-L"] == pytest.approx(sum(expected) / len(expected), rel=1e-9)


def test_meteor_bounds_and_order(java_scores):
    meteor = java_scores.per_sample["METEOR"]
    assert meteor[1] == pytest.approx(1.0)  # identical texts
    assert meteor[3] == 0.0  # empty prediction
    assert 0.0 < meteor[2] < meteor[0] < 1.0  # weak overlap < close paraphrase < identical
    assert java_scores.corpus["METEOR"] is not None


def test_per_sample_bleu_of_identical_pair_is_one(java_scores):
    assert java_scores.per_sample["BLEU-1"][1] == pytest.approx(1.0, abs=1e-6)
    assert java_scores.per_sample["BLEU-1"][3] == pytest.approx(0.0, abs=1e-6)


def test_bleu_hand_values_single_pair():
    scores = compute_report_metrics(["heart size is enlarged"], ["heart size is normal"], java="off")
    assert scores.corpus["BLEU-1"] == pytest.approx(3 / 4, rel=1e-6)
    assert scores.corpus["BLEU-2"] == pytest.approx(math.sqrt(3 / 4 * 2 / 3), rel=1e-6)
    assert scores.corpus["BLEU-3"] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3), rel=1e-6)
    # No 4-gram matches: pycocoevalcap's 1e-15 smoothing gives a tiny positive value, not 0.
    assert scores.corpus["BLEU-4"] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 1e-15) ** (1 / 4), rel=1e-6)
    # ROUGE-L: LCS 3 of 4 both ways -> P = R = 0.75 -> F = 0.75 whatever beta.
    assert scores.corpus["ROUGE-L"] == pytest.approx(0.75)


def test_cider_hand_values_and_single_sample_zero():
    # Two documents, reference n-grams never shared, so every df is 1 and idf = log(2):
    # A: unigram cosine 1/2, no bigram match, no 3/4-grams -> 10 * (0.5 + 0 + 0 + 0) / 4 = 1.25
    # B: identical with 4 tokens -> cosine 1 for n = 1..4 -> 10
    scores = compute_report_metrics(
        ["heart enlarged", "no pleural effusion seen"], ["heart normal", "no pleural effusion seen"], java="off"
    )
    assert scores.per_sample["CIDEr"] == pytest.approx([1.25, 10.0])
    assert scores.corpus["CIDEr"] == pytest.approx(5.625)
    single = compute_report_metrics(["no pleural effusion seen"], ["no pleural effusion seen"], java="off")
    assert single.corpus["CIDEr"] == 0.0
    assert any("CIDEr is 0 for a single sample" in note for note in single.notes)


def test_multiple_references_per_sample():
    scores = compute_report_metrics(["heart size is normal"], [["lungs are clear", "heart size is normal"]], java="off")
    assert scores.corpus["BLEU-4"] == pytest.approx(1.0, rel=1e-6)
    assert scores.corpus["ROUGE-L"] == pytest.approx(1.0)


def test_missing_java_falls_back_explicitly_or_raises(monkeypatch):
    monkeypatch.setattr(report_metrics.shutil, "which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="no 'java' is on PATH"):
        compute_report_metrics(["no effusion"], ["no effusion"], java="require")
    scores = compute_report_metrics(["No effusion.", "Heart normal."], ["No effusion.", "Heart big."])
    assert scores.tokenizer == "regex-fallback"
    assert scores.corpus["METEOR"] is None
    assert any("Java not found" in note for note in scores.notes)
    assert scores.corpus["BLEU-1"] == pytest.approx(3 / 4, rel=1e-6)


def test_fallback_tokenizer_drops_punctuation_like_ptb():
    assert fallback_tokenize("Normal chest x-XXXX. No effusion, 4.7 cm.") == "normal chest x-xxxx no effusion 4.7 cm"


def test_input_errors_are_clear():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_report_metrics(["a", "b"], ["a"], java="off")
    with pytest.raises(ValueError, match="no predictions"):
        compute_report_metrics([], [], java="off")
    with pytest.raises(ValueError, match="sample 0 has no reference"):
        compute_report_metrics(["a"], [[]], java="off")
