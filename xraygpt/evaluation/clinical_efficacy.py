"""Clinical efficacy: precision / recall / F1 between CheXpert labels of generated and reference reports.

Each (report, observation) pair becomes binary: positive (1) counts as 1; negative (0) and blank
(None) count as 0. Uncertain (-1) follows ``uncertain``:

* ``"negative"`` (default, "U-Zeros"): only explicit positives count, as in the usual CE code that
  keeps label 1;
* ``"positive"`` ("U-Ones"): a hedged mention ("possible consolidation") still flags the finding.
  Against OpenI's MeSH indexing neither policy wins clearly (see docs/evaluation.md);
* ``"ignore"``: the pair is left out of that observation's counts when *either* side is uncertain.

Micro scores pool the counts of all observations. Macro scores average per-observation scores over
the observations whose F1 is defined, i.e. with at least one positive on either side (an observation
nobody mentions says nothing about the generator); ``macro_over`` lists them. Precision (recall) of an
observation with no predicted (reference) positives is undefined and left out of the macro precision
(recall) the same way.
"""
from __future__ import annotations

from typing import Dict, List, Literal, Mapping, Optional, Sequence

from xraygpt.evaluation.chexpert_labeler import OBSERVATIONS, POSITIVE, UNCERTAIN, Label

UncertainPolicy = Literal["positive", "negative", "ignore"]


def binarize(label: Label, uncertain: UncertainPolicy = "negative") -> Optional[int]:
    """1 / 0, or None when the pair must be ignored."""
    if label == UNCERTAIN:
        return {"positive": 1, "negative": 0, "ignore": None}[uncertain]
    return 1 if label == POSITIVE else 0


def _ratio(num: int, den: int) -> Optional[float]:
    return num / den if den else None


def _f1(tp: int, fp: int, fn: int) -> Optional[float]:
    """2PR/(P+R) written with counts, so it is 0 (not undefined) when only one side has positives."""
    if tp + fp + fn == 0:
        return None
    return 2 * tp / (2 * tp + fp + fn)


def _mean(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def clinical_efficacy(
    predicted: Sequence[Mapping[str, Label]],
    reference: Sequence[Mapping[str, Label]],
    observations: Sequence[str] = OBSERVATIONS,
    uncertain: UncertainPolicy = "negative",
) -> Dict[str, object]:
    """Per-observation, micro and macro precision/recall/F1 (and agreement) of predicted vs reference labels."""
    if uncertain not in ("positive", "negative", "ignore"):
        raise ValueError(f"uncertain must be 'positive', 'negative' or 'ignore', got {uncertain!r}")
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted label sets but {len(reference)} reference label sets")
    per_observation: Dict[str, Dict[str, object]] = {}
    totals = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for obs in observations:
        counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for pred, ref in zip(predicted, reference):
            p, r = binarize(pred.get(obs), uncertain), binarize(ref.get(obs), uncertain)
            if p is None or r is None:
                continue
            counts[("t" if p == r else "f") + ("p" if p else "n")] += 1
        tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per_observation[obs] = {
            **counts,
            "support": tp + fn,
            "precision": precision,
            "recall": recall,
            "f1": _f1(tp, fp, fn),
            "agreement": _ratio(tp + tn, tp + fp + fn + tn),
        }
        for key in totals:
            totals[key] += counts[key]
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    macro_over = [o for o, s in per_observation.items() if s["f1"] is not None]
    return {
        "uncertain": uncertain,
        "n_samples": len(predicted),
        "per_observation": per_observation,
        "micro": {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _f1(tp, fp, fn),
        },
        "macro": {
            "precision": _mean([per_observation[o]["precision"] for o in macro_over]),
            "recall": _mean([per_observation[o]["recall"] for o in macro_over]),
            "f1": _mean([per_observation[o]["f1"] for o in macro_over]),
        },
        "macro_over": macro_over,
    }


def report_clinical_efficacy(
    predictions: Sequence[str], references: Sequence[str], uncertain: UncertainPolicy = "negative"
) -> Dict[str, object]:
    """Label both sides with the rule-based CheXpert labeler, then score them."""
    from xraygpt.evaluation.chexpert_labeler import label_reports

    return clinical_efficacy(label_reports(predictions), label_reports(references), uncertain=uncertain)
