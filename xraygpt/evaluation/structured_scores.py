"""Per-field scores of structured reports (:mod:`xraygpt.structured`) against reference reports.

Conventions (stated because each changes the numbers):

* **status accuracy** of an observation is taken over the samples whose *reference* mentions it; a
  prediction that does not mention it counts as wrong.  The macro value averages the observations
  that have at least one such sample; the micro value pools all (sample, observation) pairs.
* **laterality / location / severity** are scored where both reports call the finding present and
  the reference gives the field (not null); location and severity compare case-insensitively.
* **no_finding accuracy** is over every sample.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

FIELDS = ("laterality", "location", "severity")


def _by_observation(report: Mapping[str, Any]) -> Dict[str, Mapping[str, Any]]:
    return {f["observation"]: f for f in report.get("findings", [])}


def _same(field: str, a: Optional[str], b: Optional[str]) -> bool:
    if field == "laterality" or a is None or b is None:
        return a == b
    return a.strip().lower() == b.strip().lower()


def _rate(hits: int, n: int) -> Optional[float]:
    return hits / n if n else None


def score_structured(predicted: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """``{"status": {...}, "laterality": {...}, "location": {...}, "severity": {...}, "no_finding": {...},
    "per_sample": [...]}``; each field block has ``per_observation`` ``{obs: {"accuracy", "n"}}``, ``micro``, ``n``."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted but {len(reference)} reference structured reports")
    counts: Dict[str, Dict[str, List[int]]] = {key: defaultdict(lambda: [0, 0]) for key in ("status", *FIELDS)}
    no_finding_hits = 0
    per_sample = []
    for pred, ref in zip(predicted, reference):
        pred_by, ref_by = _by_observation(pred), _by_observation(ref)
        sample = {"status_correct": 0, "status_n": 0}
        for observation, ref_finding in ref_by.items():
            pred_finding = pred_by.get(observation)
            hit = pred_finding is not None and pred_finding["status"] == ref_finding["status"]
            counts["status"][observation][0] += hit
            counts["status"][observation][1] += 1
            sample["status_correct"] += hit
            sample["status_n"] += 1
            if pred_finding is None or not (ref_finding["status"] == pred_finding["status"] == "present"):
                continue
            for field in FIELDS:
                if ref_finding[field] is not None:
                    counts[field][observation][0] += _same(field, pred_finding[field], ref_finding[field])
                    counts[field][observation][1] += 1
        no_finding_hits += pred["no_finding"] == ref["no_finding"]
        per_sample.append(sample)
    result: Dict[str, Any] = {"n_samples": len(predicted)}
    for key, table in counts.items():
        per_observation = {o: {"accuracy": _rate(h, n), "n": n} for o, (h, n) in sorted(table.items())}
        hits, total = sum(h for h, _ in table.values()), sum(n for _, n in table.values())
        rates = [v["accuracy"] for v in per_observation.values() if v["accuracy"] is not None]
        result[key] = {"per_observation": per_observation, "micro": _rate(hits, total), "n": total,
                       "macro": sum(rates) / len(rates) if rates else None}
    result["no_finding"] = {"accuracy": _rate(no_finding_hits, len(predicted)), "n": len(predicted)}
    result["per_sample"] = per_sample
    return result


def structured_summary(result: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """Flat numbers for ``metrics.json``'s summary and the training log."""
    summary = {"STRUCT_status_acc_macro": result["status"]["macro"], "STRUCT_status_acc_micro": result["status"]["micro"]}
    summary.update({f"STRUCT_{field}_acc": result[field]["micro"] for field in FIELDS})
    summary["STRUCT_no_finding_acc"] = result["no_finding"]["accuracy"]
    return summary


def format_structured(result: Mapping[str, Any]) -> str:
    def fmt(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    parts = [f"status macro {fmt(result['status']['macro'])} micro {fmt(result['status']['micro'])} (n {result['status']['n']})"]
    parts += [f"{field} {fmt(result[field]['micro'])} (n {result[field]['n']})" for field in FIELDS]
    parts.append(f"no_finding {fmt(result['no_finding']['accuracy'])}")
    return "structured: " + "  ".join(parts)

