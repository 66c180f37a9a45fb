"""``python -m xraygpt.evaluate compare RUN_A RUN_B``: is run A really better than run B?

Both folders are outputs of ``python -m xraygpt.evaluate`` over the same test samples (same dataset,
split, study id, question and reference, in any order; anything else is refused with one line). For
every metric it prints A, B, the paired difference A - B with a 95% paired-bootstrap CI (1,000
resamples of studies, both runs scored on the same resamples) and a two-sided approximate-randomisation
p-value (each study's two outputs swapped with probability 1/2, 10,000 seeded permutations,
``(hits + 1) / (permutations + 1)``; identical runs give p = 1). Metrics are recomputed from the saved
per-sample statistics (tokenised texts, labels, sentence scores), exactly as in ``metrics.json``.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xraygpt.common.errors import DataError
from xraygpt.evaluation.bootstrap import (
    DEFAULT_PERMUTATIONS,
    DEFAULT_RESAMPLES,
    paired_test,
    report_metric_set,
    vqa_metric_set,
)
from xraygpt.evaluation.tables import load_sample_rows

Key = Tuple[str, str, str, str, str]


def sample_key(row: Dict[str, Any]) -> Key:
    return (str(row.get("dataset")), str(row.get("split")), str(row.get("image_id")), str(row.get("question") or ""),
            str(row.get("reference")))


def align(rows_a: List[Dict[str, Any]], rows_b: List[Dict[str, Any]], name_a: str, name_b: str) -> List[Dict[str, Any]]:
    """Run B's rows in run A's order; a DataError (one line) when the two were scored on different samples."""
    keys_a = [sample_key(r) for r in rows_a]
    by_key: Dict[Key, List[Dict[str, Any]]] = defaultdict(list)
    for row in rows_b:
        by_key[sample_key(row)].append(row)
    count_a, count_b = Counter(keys_a), Counter(sample_key(r) for r in rows_b)
    if count_a != count_b:
        common = sum((count_a & count_b).values())
        raise DataError(f"{name_a} and {name_b} were scored on different test samples ({len(rows_a)} vs "
                        f"{len(rows_b)} samples, {common} in common): compare two evaluations of the same test set")
    return [by_key[k].pop(0) for k in keys_a]


def _uncertain_policy(run_dir: Path) -> str:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())["report"]["clinical_efficacy"]["uncertain"]
    except (OSError, ValueError, KeyError, TypeError):
        return "negative"


def metric_sets(rows: List[Dict[str, Any]], run: str, uncertain: str, with_meteor: bool) -> Tuple[dict, dict]:
    """(report metrics, VQA metrics) of one run's rows, from the per-sample statistics it saved."""
    reports = [r for r in rows if not r.get("question")]
    vqa = [r for r in rows if r.get("question")]
    report_metrics: Dict[str, object] = {}
    if reports:
        missing = [r.get("image_id") for r in reports if "tokens_pred" not in r or "tokens_ref" not in r]
        if missing:
            raise DataError(f"{run}/samples.jsonl lacks the tokenised texts of {len(missing)} report(s) (e.g. "
                            f"{missing[0]}): it predates 'compare'; re-run python -m xraygpt.evaluate")
        gts = {i: [r["tokens_ref"]] for i, r in enumerate(reports)}
        res = {i: [r["tokens_pred"]] for i, r in enumerate(reports)}
        per_sample = {"ROUGE-L": [r["metrics"]["ROUGE-L"] for r in reports]}
        if with_meteor:
            per_sample["METEOR"] = [r["metrics"]["METEOR"] for r in reports]
        report_metrics = report_metric_set(gts, res, per_sample, [r.get("labels_pred", {}) for r in reports],
                                           [r.get("labels_ref", {}) for r in reports], uncertain)
    vqa_metrics = {}
    if vqa:
        items = [{"type": "closed" if "VQA_closed" in r["metrics"] else "open",
                  "score": r["metrics"].get("VQA_closed", r["metrics"].get("VQA_open")),
                  "exact": r["metrics"].get("VQA_open_exact", r["metrics"].get("VQA_closed", 0.0))} for r in vqa]
        vqa_metrics = vqa_metric_set(items)
    return report_metrics, vqa_metrics


def compare_runs(run_a: Path, run_b: Path, resamples: int = DEFAULT_RESAMPLES,
                 permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                 uncertain: Optional[str] = None) -> Dict[str, Any]:
    rows_a, rows_b = load_sample_rows(run_a), load_sample_rows(run_b)
    rows_b = align(rows_a, rows_b, str(run_a), str(run_b))
    uncertain = uncertain or _uncertain_policy(run_a)
    meteor = all(r.get("metrics", {}).get("METEOR") is not None for r in rows_a + rows_b if not r.get("question"))
    rep_a, vqa_a = metric_sets(rows_a, str(run_a), uncertain, meteor)
    rep_b, vqa_b = metric_sets(rows_b, str(run_b), uncertain, meteor)
    results: Dict[str, Any] = {}
    report_groups = [r["image_id"] for r in rows_a if not r.get("question")]
    vqa_groups = [r["image_id"] for r in rows_a if r.get("question")]
    if rep_a:
        results.update(paired_test(rep_a, rep_b, report_groups, resamples, permutations, seed))
    if vqa_a:
        results.update(paired_test(vqa_a, vqa_b, vqa_groups, resamples, permutations, seed))
    return {"run_a": str(run_a), "run_b": str(run_b), "n_samples": len(rows_a), "uncertain": uncertain,
            "resamples": resamples, "permutations": permutations, "seed": seed, "metrics": results}


def _f(value: Optional[float], width: int = 8) -> str:
    return f"{'n/a':>{width}s}" if value is None else f"{value:{width}.4f}"


def _signed(value: float) -> str:
    return f"{round(value, 4) + 0.0:+.4f}"  # + 0.0 turns a rounded -0.0 into 0.0


def format_comparison(result: Dict[str, Any]) -> str:
    lines = [f"A = {result['run_a']}", f"B = {result['run_b']}",
             f"{result['n_samples']} paired samples; 95% paired-bootstrap CI ({result['resamples']} resamples), "
             f"approximate-randomisation p ({result['permutations']} permutations, seed {result['seed']})",
             f"{'metric':34s}{'A':>8s}{'B':>9s}{'A - B':>9s}  {'95% CI':>19s}  {'p':>7s}"]
    for name, m in result["metrics"].items():
        ci = "n/a" if m["low"] is None else f"[{_signed(m['low'])}, {_signed(m['high'])}]"
        p = "n/a" if m["p_value"] is None else f"{m['p_value']:.4f}"
        diff = "n/a" if m["diff"] is None else _signed(m["diff"])
        lines.append(f"{name:34s}{_f(m['a'])} {_f(m['b'])} {diff:>8s}  {ci:>19s}  {p:>7s}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xraygpt.evaluate compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path, help="output folder of one evaluation (holds samples.jsonl)")
    parser.add_argument("run_b", type=Path, help="output folder of another evaluation over the same samples")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples for the CI")
    parser.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS, help="approximate-randomisation draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uncertain", choices=["negative", "positive", "ignore"],
                        help="uncertain-label policy for clinical efficacy (default: run A's)")
    parser.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    if args.resamples < 1 or args.permutations < 1:
        raise DataError("--resamples and --permutations must be at least 1")
    result = compare_runs(args.run_a, args.run_b, args.resamples, args.permutations, args.seed, args.uncertain)
    print(format_comparison(result))
    if args.json:
        from xraygpt.common.fileio import atomic_write_json

        atomic_write_json(args.json, result)
    return 0
