"""The files people open after an evaluation: a per-sample table (CSV + JSONL) and a ReXrank-style JSON.

* ``samples.jsonl`` / ``samples.csv``: one row per sample with dataset, split, study (image) id, prompt,
  reference, generated text, the CheXpert labels of both (``ref/<observation>``, ``gen/<observation>``:
  1, 0, -1 or blank) and the per-sample scores (sentence BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; VQA score).
* ``rexrank.json``: ``{study_id: {"model_prediction": report}}`` for the report (non-VQA) samples, the
  shape report-generation leaderboards such as ReXrank read predictions in.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from xraygpt.common.fileio import atomic_write_json, atomic_write_text
from xraygpt.evaluation.chexpert_labeler import OBSERVATIONS
from xraygpt.evaluation.report_metrics import REPORT_METRIC_KEYS

TEXT_COLUMNS = ("dataset", "split", "image_id", "kind", "prompt", "question", "reference", "prediction")
SCORE_COLUMNS = REPORT_METRIC_KEYS + ("VQA_closed", "VQA_open", "VQA_open_exact")


def sample_rows(records: Sequence[Mapping[str, Any]], per_sample: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Records (what was generated) joined with their scores and labels, one dict per sample."""
    if len(records) != len(per_sample):
        raise ValueError(f"{len(records)} records but {len(per_sample)} scored samples")
    return [{**record, **scored} for record, scored in zip(records, per_sample)]


def _csv_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {c: row.get(c) if row.get(c) is not None else "" for c in TEXT_COLUMNS}
    metrics = row.get("metrics") or {}
    out.update({c: "" if metrics.get(c) is None else metrics[c] for c in SCORE_COLUMNS})
    for side, key in (("ref", "labels_ref"), ("gen", "labels_pred")):
        labels = row.get(key) or {}
        out.update({f"{side}/{o}": labels.get(o, "") for o in OBSERVATIONS})
    return out


def write_sample_table(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> List[Path]:
    """``samples.jsonl`` (everything, nested) and ``samples.csv`` (flat columns), written atomically."""
    out_dir = Path(out_dir)
    jsonl = atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buffer = io.StringIO()
    header = list(TEXT_COLUMNS) + list(SCORE_COLUMNS) + [f"{s}/{o}" for s in ("ref", "gen") for o in OBSERVATIONS]
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(_csv_row(r) for r in rows)
    return [jsonl, atomic_write_text(out_dir / "samples.csv", buffer.getvalue())]


def rexrank_predictions(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, str]]:
    """``{study_id: {"model_prediction": report}}`` of the report samples; a repeated study id is an error."""
    out: Dict[str, Dict[str, str]] = {}
    for row in rows:
        if row.get("question"):
            continue
        study = str(row["image_id"])
        if study in out:
            raise ValueError(f"study id {study!r} appears twice among the report samples: ids must be unique")
        out[study] = {"model_prediction": row["prediction"]}
    return out


def write_rexrank(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return atomic_write_json(Path(out_dir) / "rexrank.json", rexrank_predictions(rows))


def load_sample_rows(run_dir: Path) -> List[Dict[str, Any]]:
    """The rows of a finished evaluation's ``samples.jsonl`` (for ``compare``)."""
    from xraygpt.common.errors import DataError

    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: pass the output folder of 'python -m xraygpt.evaluate'")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{path}:{number}: not JSON ({exc}); re-run the evaluation") from None
    if not rows:
        raise DataError(f"{path} holds no samples")
    return rows
