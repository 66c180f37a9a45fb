"""Bootstrap confidence intervals and paired tests for every evaluation metric, from per-sample statistics.

Each metric is written as *per-sample sufficient statistics* plus a function that turns their
(weighted) sum into the metric, so a resample costs one matrix product instead of a re-run of the
scorers:

* BLEU-n: pycocoevalcap's own per-sample counts (clipped n-gram matches, guesses, hypothesis length,
  closest reference length); corpus BLEU of a resample is recomputed from the resampled sums, exactly
  as pycocoevalcap pools them.
* CIDEr-D: its idf comes from the scored reference corpus, so a resample changes the idf. With
  ``idf >= 0``, every term of CIDEr-D's clipped cosine is linear in ``idf**2``: per resample we
  recompute the document frequencies from the resampled references and get every sample's score from
  three sparse matrix products (numerator and the two norms per n-gram order).
* ROUGE-L, METEOR: means of per-sample scores (METEOR's corpus score pools its statistics in Java;
  the mean of segment scores is the resampled quantity here, and is what the CI describes).
* Clinical efficacy: per-sample tp/fp/fn/tn indicators per observation; micro, macro and
  per-observation P/R/F1 recomputed per resample with ``clinical_efficacy``'s rules.
* VQA: closed-question accuracy, open-question token F1 and exact match (means over their items).

Resampling is over *studies* (``groups``; by default every sample is its own study), 1,000 seeded
resamples, 95% percentile intervals. ``paired_test`` compares two runs over the same samples: a
paired bootstrap CI of the difference, and an approximate-randomisation p-value (each sample's pair
of outputs swapped with probability 1/2, 10,000 seeded permutations, ``(hits + 1) / (P + 1)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from xraygpt.evaluation.chexpert_labeler import OBSERVATIONS, Label
from xraygpt.evaluation.clinical_efficacy import UncertainPolicy, binarize

DEFAULT_RESAMPLES = 1000
DEFAULT_PERMUTATIONS = 10000
_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's BLEU smoothing constants


@dataclass
class LinearMetric:
    """A metric that is a function of summed per-sample statistics: ``finish(weights @ stats)``."""

    stats: np.ndarray  # (n_samples, k)
    finish: Callable[[np.ndarray], np.ndarray]  # (B, k) -> (B,), NaN where undefined

    def values(self, weights: np.ndarray) -> np.ndarray:
        return self.finish(weights @ self.stats)

    def swapped(self, other: "LinearMetric", masks: np.ndarray) -> tuple:
        """Values of the two runs with the samples in ``masks`` (B, n) exchanged between them."""
        sa, sb = self.stats, other.stats
        mine = (1 - masks) @ sa + masks @ sb
        theirs = masks @ sa + (1 - masks) @ sb
        return self.finish(mine), self.finish(theirs)


# ---------------------------------------------------------------- statistics per metric family
def _nan_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def mean_metric(values: Sequence[float]) -> LinearMetric:
    v = np.asarray(values, dtype=float)
    stats = np.stack([v, np.ones_like(v)], axis=1)
    return LinearMetric(stats, lambda s: _nan_ratio(s[:, 0], s[:, 1]))


def bleu_metrics(gts: Mapping[int, List[str]], res: Mapping[int, List[str]], n: int = 4) -> Dict[str, LinearMetric]:
    """BLEU-1..n from pycocoevalcap's per-sample counts (its tokenised inputs, ``closest`` reference length)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=n)
    keys = sorted(gts)
    for key in keys:
        scorer += (res[key][0], gts[key])
    rows = []
    for comps in scorer.ctest:
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])
        rows.append([comps["testlen"], reflen, *comps["guess"], *comps["correct"]])
    stats = np.asarray(rows, dtype=float)

    def finish_for(order: int) -> Callable[[np.ndarray], np.ndarray]:
        def finish(s: np.ndarray) -> np.ndarray:
            testlen, reflen = s[:, 0], s[:, 1]
            guess, correct = s[:, 2:2 + n], s[:, 2 + n:2 + 2 * n]
            bleu = np.prod((correct[:, :order] + _TINY) / (guess[:, :order] + _SMALL), axis=1) ** (1.0 / order)
            ratio = (testlen + _TINY) / (reflen + _SMALL)
            with np.errstate(divide="ignore", over="ignore"):
                penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, 1e-300)), 1.0)
            return bleu * penalty
        return finish

    return {f"BLEU-{k}": LinearMetric(stats, finish_for(k)) for k in range(1, n + 1)}


class _Sparse:
    """A (rows, cols) sparse matrix in sorted-row form, multiplied by dense (B, cols) blocks with numpy only."""

    def __init__(self, rows: List[int], cols: List[int], vals: List[float], n_rows: int):
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        self.rows = np.asarray(rows, dtype=np.int64)[order]
        self.cols = np.asarray(cols, dtype=np.int64)[order]
        self.vals = np.asarray(vals, dtype=float)[order]
        self.n_rows = n_rows

    def times(self, dense: np.ndarray) -> np.ndarray:
        """(B, n_rows) = dense (B, n_cols) @ self.T, one bincount per row of ``dense``."""
        out = np.empty((dense.shape[0], self.n_rows))
        for b in range(dense.shape[0]):
            out[b] = np.bincount(self.rows, weights=self.vals * dense[b, self.cols], minlength=self.n_rows)
        return out

    def transposed_times(self, dense: np.ndarray, n_cols: int) -> np.ndarray:
        """(B, n_cols) = dense (B, n_rows) @ self."""
        out = np.empty((dense.shape[0], n_cols))
        for b in range(dense.shape[0]):
            out[b] = np.bincount(self.cols, weights=self.vals * dense[b, self.rows], minlength=n_cols)
        return out


class CiderMetric:
    """pycocoevalcap's CIDEr-D with its idf recomputed from each resample's references."""

    def __init__(self, gts: Mapping[int, List[str]], res: Mapping[int, List[str]], n: int = 4, sigma: float = 6.0):
        from pycocoevalcap.cider.cider_scorer import precook

        keys = sorted(gts)
        vocab: Dict[tuple, int] = {}
        self.n_samples, self.n = len(keys), n
        doc_rows: List[int] = []
        doc_cols: List[int] = []
        pair_sample: List[int] = []
        parts: Dict[str, tuple] = {name: ([], [], []) for name in ("num", "hyp", "ref")}  # rows, cols, values
        penalties = []

        def index(gram: tuple) -> int:
            return vocab.setdefault(gram, len(vocab))

        def add(name: str, pair: int, gram: tuple, value: float) -> None:
            rows, cols, vals = parts[name]
            rows.append(pair * n + len(gram) - 1)
            cols.append(index(gram))
            vals.append(value)

        for i, key in enumerate(keys):
            hyp = precook(res[key][0], n)
            refs = [precook(r, n) for r in gts[key]]
            for gram in {g for ref in refs for g in ref}:
                doc_rows.append(i)
                doc_cols.append(index(gram))
            hyp_len = sum(c for g, c in hyp.items() if len(g) == 2)  # pycocoevalcap's "length" counts bigrams
            for ref in refs:
                pair = len(pair_sample)
                pair_sample.append(i)
                ref_len = sum(c for g, c in ref.items() if len(g) == 2)
                penalties.append(math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma ** 2)))
                for gram, tf in hyp.items():
                    add("hyp", pair, gram, float(tf) ** 2)
                    if gram in ref:
                        add("num", pair, gram, float(min(tf, ref[gram]) * ref[gram]))
                for gram, tf in ref.items():
                    add("ref", pair, gram, float(tf) ** 2)
        self.vocab_size, pairs = len(vocab), len(pair_sample)
        self.doc = _Sparse(doc_rows, doc_cols, [1.0] * len(doc_rows), self.n_samples)
        self.mats = {name: _Sparse(*parts[name], pairs * n) for name in parts}
        self.penalty = np.asarray(penalties)
        self.pair_sample = np.asarray(pair_sample)
        self.refs_per_sample = np.bincount(self.pair_sample, minlength=self.n_samples).astype(float)

    def sample_scores(self, weights: np.ndarray) -> np.ndarray:
        """Per-sample CIDEr-D (B, n_samples) when the corpus is the samples weighted by ``weights`` (B, n)."""
        df = self.doc.transposed_times(weights, self.vocab_size)  # (B, vocab): resampled document frequencies
        total = weights.sum(axis=1, keepdims=True)
        idf2 = (np.log(total) - np.log(np.maximum(df, 1.0))) ** 2
        num, hyp, ref = (self.mats[k].times(idf2) for k in ("num", "hyp", "ref"))  # (B, pairs*n)
        den = np.sqrt(hyp) * np.sqrt(ref)
        val = np.where(den > 0, num / np.where(den > 0, den, 1), num)
        val = val.reshape(weights.shape[0], -1, self.n).mean(axis=2) * self.penalty[None, :]  # (B, pairs)
        per_sample = np.zeros((weights.shape[0], self.n_samples))
        np.add.at(per_sample, (slice(None), self.pair_sample), val)
        return 10.0 * per_sample / self.refs_per_sample

    def values(self, weights: np.ndarray) -> np.ndarray:
        scores = self.sample_scores(weights)
        return (scores * weights).sum(axis=1) / weights.sum(axis=1)

    def full_set_metric(self) -> LinearMetric:
        """On the full sample set the idf is fixed, so CIDEr is the mean of fixed per-sample scores."""
        return mean_metric(self.sample_scores(np.ones((1, self.n_samples)))[0])


def clinical_metrics(predicted: Sequence[Mapping[str, Label]], reference: Sequence[Mapping[str, Label]],
                     uncertain: UncertainPolicy = "negative",
                     observations: Sequence[str] = OBSERVATIONS) -> Dict[str, LinearMetric]:
    """CE micro/macro P/R/F1 and per-observation F1, with ``clinical_efficacy``'s definitions."""
    k = len(observations)
    stats = np.zeros((len(predicted), 4 * k))  # tp, fp, fn per observation, then tn
    for i, (pred, ref) in enumerate(zip(predicted, reference)):
        for j, obs in enumerate(observations):
            p, r = binarize(pred.get(obs), uncertain), binarize(ref.get(obs), uncertain)
            if p is None or r is None:
                continue
            slot = 0 if p and r else 1 if p else 2 if r else 3
            stats[i, slot * k + j] = 1

    def parts(s: np.ndarray) -> tuple:
        return s[:, :k], s[:, k:2 * k], s[:, 2 * k:3 * k]

    def f1(tp, fp, fn):
        return _nan_ratio(2 * tp, 2 * tp + fp + fn)

    def macro(which: str) -> Callable[[np.ndarray], np.ndarray]:
        def finish(s: np.ndarray) -> np.ndarray:
            tp, fp, fn = parts(s)
            defined = (tp + fp + fn) > 0
            score = {"f1": f1(tp, fp, fn), "precision": _nan_ratio(tp, tp + fp), "recall": _nan_ratio(tp, tp + fn)}[which]
            score = np.where(defined, score, np.nan)
            with np.errstate(invalid="ignore"):
                counts = np.sum(~np.isnan(score), axis=1)
                return np.where(counts > 0, np.nansum(score, axis=1) / np.maximum(counts, 1), np.nan)
        return finish

    def micro(which: str) -> Callable[[np.ndarray], np.ndarray]:
        def finish(s: np.ndarray) -> np.ndarray:
            tp, fp, fn = (x.sum(axis=1) for x in parts(s))
            return {"f1": f1(tp, fp, fn), "precision": _nan_ratio(tp, tp + fp), "recall": _nan_ratio(tp, tp + fn)}[which]
        return finish

    def per_obs(j: int) -> Callable[[np.ndarray], np.ndarray]:
        def finish(s: np.ndarray) -> np.ndarray:
            tp, fp, fn = parts(s)
            return f1(tp[:, j], fp[:, j], fn[:, j])
        return finish

    out: Dict[str, LinearMetric] = {}
    for avg, make in (("micro", micro), ("macro", macro)):
        for which in ("precision", "recall", "f1"):
            out[f"CE_{avg}_{which}"] = LinearMetric(stats, make(which))
    for j, obs in enumerate(observations):
        out[f"CE_f1/{obs}"] = LinearMetric(stats, per_obs(j))
    return out


# ---------------------------------------------------------------- resampling
def resample_weights(groups: Sequence[object], resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multiplicities of each sample when whole groups (studies) are drawn with replacement."""
    _, group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_groups, size=(resamples, n_groups))
    group_counts = np.zeros((resamples, n_groups))
    np.add.at(group_counts, (np.arange(resamples)[:, None], drawn), 1)
    return group_counts[:, group_index]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    alpha = (1 - level) / 2
    low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def _value(metric, n: int) -> Optional[float]:
    v = float(metric.values(np.ones((1, n)))[0])
    return v if math.isfinite(v) else None


def bootstrap_intervals(metrics: Mapping[str, object], groups: Sequence[object],
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Dict[str, dict]:
    """``{name: {"value", "low", "high"}}`` for metrics over the same samples (one shared set of resamples)."""
    weights = resample_weights(groups, resamples, seed)
    out = {}
    for name, metric in metrics.items():
        low, high = percentile_interval(metric.values(weights), level)
        out[name] = {"value": _value(metric, len(groups)), "low": low, "high": high}
    return out


def paired_test(metrics_a: Mapping[str, object], metrics_b: Mapping[str, object], groups: Sequence[object],
                resamples: int = DEFAULT_RESAMPLES, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                level: float = 0.95, chunk: int = 500) -> Dict[str, dict]:
    """Per metric: A, B, A - B with a paired-bootstrap CI, and an approximate-randomisation p-value.

    Both runs are scored on the same resamples (so the CI is of the paired difference). For the
    p-value, each study's two outputs are swapped with probability 1/2; a metric without a linear form
    over the full set (CIDEr) uses its fixed full-set per-sample scores, which is exact there.
    """
    n = len(groups)
    weights = resample_weights(groups, resamples, seed)
    _, group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups = int(group_index.max()) + 1
    rng = np.random.default_rng(seed + 1)
    out = {}
    for name in metrics_a:
        a, b = metrics_a[name], metrics_b[name]
        va, vb = _value(a, n), _value(b, n)
        if va is None or vb is None:
            out[name] = {"a": va, "b": vb, "diff": None, "low": None, "high": None, "p_value": None}
            continue
        low, high = percentile_interval(a.values(weights) - b.values(weights), level)
        la = a.full_set_metric() if isinstance(a, CiderMetric) else a
        lb = b.full_set_metric() if isinstance(b, CiderMetric) else b
        observed = abs(va - vb)
        hits, done = 0, 0
        perm_rng = np.random.default_rng(rng.integers(1 << 32))
        while done < permutations:
            size = min(chunk, permutations - done)
            masks = (perm_rng.random((size, n_groups)) < 0.5).astype(float)[:, group_index]
            pa, pb = la.swapped(lb, masks)
            hits += int(np.sum(np.abs(pa - pb) >= observed - 1e-12))
            done += size
        out[name] = {"a": va, "b": vb, "diff": va - vb, "low": low, "high": high,
                     "p_value": (hits + 1) / (permutations + 1)}
    return out


# ---------------------------------------------------------------- the metric sets of an evaluation
def report_metric_set(gts: Mapping[int, List[str]], res: Mapping[int, List[str]],
                      per_sample: Mapping[str, Sequence[float]],
                      pred_labels: Sequence[Mapping[str, Label]], ref_labels: Sequence[Mapping[str, Label]],
                      uncertain: UncertainPolicy = "negative") -> Dict[str, object]:
    """Every report metric of ``score_reports`` as resamplable statistics (tokenised texts keyed 0..n-1)."""
    metrics: Dict[str, object] = dict(bleu_metrics(gts, res))
    if "METEOR" in per_sample:
        metrics["METEOR"] = mean_metric(per_sample["METEOR"])
    metrics["ROUGE-L"] = mean_metric(per_sample["ROUGE-L"])
    metrics["CIDEr"] = CiderMetric(gts, res)
    metrics.update(clinical_metrics(pred_labels, ref_labels, uncertain))
    return metrics


def vqa_metric_set(items: Sequence[Mapping[str, object]]) -> Dict[str, LinearMetric]:
    """Closed accuracy, open token F1 and open exact match over VQA items (``type``, ``score``, ``exact``)."""
    closed = np.asarray([i["type"] == "closed" for i in items], dtype=float)
    score = np.asarray([float(i["score"]) for i in items])
    exact = np.asarray([float(i.get("exact", i["score"])) for i in items])

    def ratio(num: np.ndarray, den: np.ndarray) -> LinearMetric:
        return LinearMetric(np.stack([num, den], axis=1), lambda s: _nan_ratio(s[:, 0], s[:, 1]))

    return {
        "VQA_closed_accuracy": ratio(score * closed, closed),
        "VQA_open_token_f1": ratio(score * (1 - closed), 1 - closed),
        "VQA_open_exact_match": ratio(exact * (1 - closed), 1 - closed),
    }
