"""Agreement of our labeler with reference CheXpert labels (e.g. the CheXpert labeler's own output).

``python -m xraygpt.evaluation.labeler_agreement ../shared/sample_data/labeler_dev/reports.jsonl``

Three views of the same labels, each an F1 of one binary class per observation:

* ``u_ones``: positive class = 1 or -1 (uncertain counted positive), the usual CE convention for
  comparing labelers;
* ``strict``: positive class = 1 only;
* ``mention``: positive class = any label (1, 0 or -1): do both labelers find the observation at all.

Macro F1 averages the observations with at least one positive on either side; micro pools counts.
``split`` gives a deterministic partition by a hash of the report id (``develop`` = 2/3, ``holdout`` =
1/3), so rule changes can be checked on reports they were not written on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from xraygpt.common.errors import DataError
from xraygpt.evaluation.chexpert_labeler import OBSERVATIONS, Label, label_reports

VIEWS: Dict[str, Callable[[Label], bool]] = {
    "u_ones": lambda v: v in (1, -1),
    "strict": lambda v: v == 1,
    "mention": lambda v: v is not None,
}


def load_labelled_reports(path: Path) -> List[Dict[str, object]]:
    """Rows of a ``reports.jsonl`` (``id``, ``text``, ``labels``); a bad line is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled reports not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["id"], row["text"], row["labels"]  # noqa: B018 - presence check
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: expected JSON with id, text and labels ({exc})") from None
        rows.append(row)
    return rows


def split_of(report_id: str) -> str:
    """'develop' for 2/3 of ids, 'holdout' for the rest; stable across runs and machines."""
    digest = int(hashlib.sha1(str(report_id).encode("utf-8")).hexdigest()[:8], 16)
    return "holdout" if digest % 3 == 0 else "develop"


def _f1(tp: int, fp: int, fn: int) -> Optional[float]:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None


def agreement(predicted: Sequence[Mapping[str, Label]], reference: Sequence[Mapping[str, Label]],
              observations: Sequence[str] = OBSERVATIONS) -> Dict[str, Dict[str, object]]:
    """``{view: {"per_observation": {obs: f1}, "macro": f1, "micro": f1, "counts": {...}}}``."""
    out: Dict[str, Dict[str, object]] = {}
    for view, positive in VIEWS.items():
        per_obs: Dict[str, Optional[float]] = {}
        counts: Dict[str, Dict[str, int]] = {}
        total = [0, 0, 0]
        for obs in observations:
            tp = fp = fn = 0
            for pred, ref in zip(predicted, reference):
                p, r = positive(pred.get(obs)), positive(ref.get(obs))
                tp += p and r
                fp += p and not r
                fn += r and not p
            per_obs[obs] = _f1(tp, fp, fn)
            counts[obs] = {"tp": tp, "fp": fp, "fn": fn}
            total = [total[0] + tp, total[1] + fp, total[2] + fn]
        defined = [v for v in per_obs.values() if v is not None]
        out[view] = {
            "per_observation": per_obs,
            "counts": counts,
            "macro": sum(defined) / len(defined) if defined else None,
            "micro": _f1(*total),
        }
    return out


def score_file(path: Path, split: Optional[str] = None) -> Dict[str, object]:
    """Label every report of ``path`` (optionally one split) and score it against the file's labels."""
    rows = load_labelled_reports(path)
    if split is not None:
        rows = [r for r in rows if split_of(r["id"]) == split]
    predicted = label_reports(r["text"] for r in rows)
    return {"n": len(rows), "split": split or "all", **agreement(predicted, [r["labels"] for r in rows])}


def disagreements(path: Path, observation: str, view: str = "u_ones",
                  split: Optional[str] = None) -> Iterable[Dict[str, object]]:
    """Reports where we and the reference differ on one observation (for reading, not for fitting)."""
    positive = VIEWS[view]
    for row in load_labelled_reports(path):
        if split is not None and split_of(row["id"]) != split:
            continue
        ours = label_reports([row["text"]])[0][observation]
        theirs = row["labels"].get(observation)
        if positive(ours) != positive(theirs):
            yield {"id": row["id"], "ours": ours, "theirs": theirs, "text": row["text"]}


def format_scores(result: Mapping[str, object]) -> str:
    lines = [f"{result['n']} reports ({result['split']})"]
    lines.append(f"{'observation':28s}" + "".join(f"{v:>10s}" for v in VIEWS))
    for obs in OBSERVATIONS:
        cells = [result[v]["per_observation"][obs] for v in VIEWS]
        lines.append(f"{obs:28s}" + "".join("       n/a" if c is None else f"{c:10.3f}" for c in cells))
    for avg in ("macro", "micro"):
        lines.append(f"{avg + ' F1':28s}" + "".join(f"{result[v][avg]:10.3f}" for v in VIEWS))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Agreement of our labeler with reference CheXpert labels.")
    parser.add_argument("reports", type=Path, help="reports.jsonl with id, text and labels per line")
    parser.add_argument("--split", choices=["develop", "holdout"], help="score one deterministic part only")
    parser.add_argument("--json", type=Path, help="also write the scores as JSON here")
    args = parser.parse_args(argv)
    result = score_file(args.reports, args.split)
    print(format_scores(result))
    if args.json:
        from xraygpt.common.fileio import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    from xraygpt.common.cli import run_cli

    run_cli(main)
