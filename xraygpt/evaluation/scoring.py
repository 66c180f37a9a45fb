"""One call that scores a list of generated texts: reports and VQA answers, corpus and per sample.

``score_reports`` is what the evaluation CLI and the trainer's validation both use, so the numbers in
training logs and in ``metrics.json`` are computed the same way.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from xraygpt.evaluation.chexpert_labeler import label_reports
from xraygpt.evaluation.clinical_efficacy import UncertainPolicy, clinical_efficacy
from xraygpt.evaluation.report_metrics import REPORT_METRIC_KEYS, JavaMode, compute_report_metrics
from xraygpt.evaluation.vqa_metrics import score_vqa


def _compact_labels(labels: Dict[str, Optional[int]]) -> Dict[str, int]:
    return {o: v for o, v in labels.items() if v is not None}


def score_reports(
    predictions: Sequence[str],
    references: Sequence[str],
    questions: Optional[Sequence[Optional[str]]] = None,
    *,
    java: JavaMode = "auto",
    meteor: bool = True,
    uncertain: UncertainPolicy = "negative",
) -> Dict[str, object]:
    """Score generated texts against references.

    Items whose ``questions`` entry is a non-empty string are VQA items (exact match / token F1);
    the others are reports (BLEU-1..4, METEOR, ROUGE-L, CIDEr, CheXpert clinical efficacy).
    Returns ``{"summary": flat name -> float|None, "report": {...}, "vqa": {...}, "per_sample": [...]}``;
    ``summary`` is what to log, ``per_sample`` lines up with the inputs.
    ``meteor=False`` avoids METEOR's ~30 s Java start-up (e.g. per-epoch validation).
    """
    n = len(predictions)
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    if questions is not None and len(questions) != n:
        raise ValueError(f"{n} predictions but {len(questions)} questions")
    if n == 0:
        raise ValueError("nothing to score: no predictions")
    is_vqa = [bool(questions is not None and questions[i]) for i in range(n)]
    report_idx = [i for i in range(n) if not is_vqa[i]]
    vqa_idx = [i for i in range(n) if is_vqa[i]]
    per_sample: List[Dict[str, object]] = [{"kind": "vqa" if v else "report"} for v in is_vqa]
    summary: Dict[str, Optional[float]] = {}
    result: Dict[str, object] = {"n_samples": n, "summary": summary, "per_sample": per_sample}

    if report_idx:
        preds = [predictions[i] for i in report_idx]
        refs = [references[i] for i in report_idx]
        nlg = compute_report_metrics(preds, refs, java=java, meteor=meteor)
        pred_labels, ref_labels = label_reports(preds), label_reports(refs)
        ce = clinical_efficacy(pred_labels, ref_labels, uncertain=uncertain)
        result["report"] = {
            "n": len(report_idx),
            "metrics": nlg.corpus,
            "tokenizer": nlg.tokenizer,
            "notes": nlg.notes,
            "clinical_efficacy": ce,
        }
        summary.update({k: nlg.corpus.get(k) for k in REPORT_METRIC_KEYS})
        for avg in ("micro", "macro"):
            for key in ("precision", "recall", "f1"):
                summary[f"CE_{avg}_{key}"] = ce[avg][key]
        for j, i in enumerate(report_idx):
            per_sample[i]["metrics"] = {k: v[j] for k, v in nlg.per_sample.items()}
            per_sample[i]["labels_pred"] = _compact_labels(pred_labels[j])
            per_sample[i]["labels_ref"] = _compact_labels(ref_labels[j])

    if vqa_idx:
        vqa = score_vqa([predictions[i] for i in vqa_idx], [references[i] for i in vqa_idx])
        items = vqa.pop("per_item")
        result["vqa"] = vqa
        summary.update({f"VQA_{k}": vqa[k] for k in ("closed_accuracy", "open_token_f1", "open_exact_match")})
        for item, i in zip(items, vqa_idx):
            per_sample[i]["metrics"] = {f"VQA_{item['type']}": item["score"]}
    return result


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(result: Dict[str, object]) -> str:
    """Human-readable lines for the terminal."""
    lines = []
    report = result.get("report")
    if report:
        metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in report["metrics"].items())
        lines.append(f"reports: {report['n']} ({report['tokenizer']} tokenizer)  {metrics}")
        ce = report["clinical_efficacy"]
        for avg in ("micro", "macro"):
            values = "  ".join(f"{k} {_fmt(v)}" for k, v in ce[avg].items())
            lines.append(f"clinical efficacy {avg} (uncertain -> {ce['uncertain']}): {values}")
        lines.extend(f"note: {note}" for note in report["notes"])
    vqa = result.get("vqa")
    if vqa:
        lines.append(
            f"VQA: closed accuracy {_fmt(vqa['closed_accuracy'])} ({vqa['n_closed']} items)  "
            f"open token F1 {_fmt(vqa['open_token_f1'])} ({vqa['n_open']} items)"
        )
    return "\n".join(lines)

