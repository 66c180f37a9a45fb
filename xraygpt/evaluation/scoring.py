"""One call that scores a list of generated texts: reports and VQA answers, corpus and per sample.

``score_reports`` is what the evaluation CLI and the trainer's validation both use, so the numbers in
training logs and in ``metrics.json`` are computed the same way.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from xraygpt.evaluation.bootstrap import bootstrap_intervals, report_metric_set, vqa_metric_set
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
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    groups: Optional[Sequence[object]] = None,
) -> Dict[str, object]:
    """Score generated texts against references.

    Items whose ``questions`` entry is a non-empty string are VQA items (exact match / token F1);
    the others are reports (BLEU-1..4, METEOR, ROUGE-L, CIDEr, CheXpert clinical efficacy).
    Returns ``{"summary": flat name -> float|None, "report": {...}, "vqa": {...}, "per_sample": [...]}``;
    ``summary`` is what to log, ``per_sample`` lines up with the inputs.
    ``meteor=False`` avoids METEOR's Java start-up (e.g. per-epoch validation).
    ``bootstrap=N`` adds ``confidence_intervals``: 95% percentile intervals of every summary metric and
    per-observation F1 from N seeded resamples of ``groups`` (study ids; default: one per sample).
    """
    n = len(predictions)
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    if questions is not None and len(questions) != n:
        raise ValueError(f"{n} predictions but {len(questions)} questions")
    if n == 0:
        raise ValueError("nothing to score: no predictions")
    if groups is not None and len(groups) != n:
        raise ValueError(f"{n} predictions but {len(groups)} group ids")
    groups = list(range(n)) if groups is None else list(groups)
    intervals: Dict[str, dict] = {}
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
            per_sample[i]["tokens_pred"] = nlg.tokenized_predictions[j][0]
            per_sample[i]["tokens_ref"] = nlg.tokenized_references[j][0]
        if bootstrap:
            metric_set = report_metric_set(nlg.tokenized_references, nlg.tokenized_predictions, nlg.per_sample,
                                           pred_labels, ref_labels, uncertain)
            intervals.update(bootstrap_intervals(metric_set, [groups[i] for i in report_idx], bootstrap, bootstrap_seed))
            _center_meteor_interval(intervals, summary.get("METEOR"))

    if vqa_idx:
        vqa = score_vqa([predictions[i] for i in vqa_idx], [references[i] for i in vqa_idx])
        items = vqa.pop("per_item")
        result["vqa"] = vqa
        summary.update({f"VQA_{k}": vqa[k] for k in ("closed_accuracy", "open_token_f1", "open_exact_match")})
        for item, i in zip(items, vqa_idx):
            per_sample[i]["metrics"] = {f"VQA_{item['type']}": item["score"]}
            if item["type"] == "open":
                per_sample[i]["metrics"]["VQA_open_exact"] = item["exact"]
        if bootstrap:
            intervals.update(bootstrap_intervals(vqa_metric_set(items), [groups[i] for i in vqa_idx], bootstrap,
                                                 bootstrap_seed))
    if bootstrap:
        result["confidence_intervals"] = {
            "method": "percentile bootstrap over studies", "level": 0.95, "resamples": bootstrap,
            "seed": bootstrap_seed, "n_studies": len(set(map(str, groups))), "metrics": intervals,
        }
    return result


def _center_meteor_interval(intervals: Dict[str, Any], corpus: Optional[float]) -> None:
    """Put METEOR's interval around the corpus score the summary reports.

    The Java scorer pools its statistics over the corpus, so what can be resampled is the mean segment
    score; its percentile interval is shifted by (corpus - segment mean), keeping the resampled spread,
    so the printed value lies inside its own interval. The segment mean is kept beside it.
    """
    meteor = intervals.get("METEOR")
    if not meteor or corpus is None or meteor.get("value") is None or meteor.get("low") is None:
        return
    shift = corpus - meteor["value"]
    intervals["METEOR"] = {"value": corpus, "low": meteor["low"] + shift, "high": meteor["high"] + shift,
                           "segment_mean": meteor["value"]}


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(result: Dict[str, object]) -> str:
    """Human-readable lines for the terminal; with bootstrap intervals each value reads ``v [low, high]``."""
    cis = (result.get("confidence_intervals") or {}).get("metrics", {})

    def val(name: str, value: Optional[float]) -> str:
        ci = cis.get(name)
        if ci is None or ci["low"] is None or value is None:
            return _fmt(value)
        return f"{_fmt(value)} [{ci['low']:.4f}, {ci['high']:.4f}]"

    lines = []
    report = result.get("report")
    if report:
        lines.append(f"reports: {report['n']} ({report['tokenizer']} tokenizer)")
        lines.append("  " + "  ".join(f"{k} {val(k, v)}" for k, v in report["metrics"].items()))
        ce = report["clinical_efficacy"]
        for avg in ("micro", "macro"):
            values = "  ".join(f"{k} {val(f'CE_{avg}_{k}', v)}" for k, v in ce[avg].items())
            lines.append(f"clinical efficacy {avg} (uncertain -> {ce['uncertain']}): {values}")
        lines.extend(f"note: {note}" for note in report["notes"])
    vqa = result.get("vqa")
    if vqa:
        lines.append(
            f"VQA: closed accuracy {val('VQA_closed_accuracy', vqa['closed_accuracy'])} ({vqa['n_closed']} items)  "
            f"open token F1 {val('VQA_open_token_f1', vqa['open_token_f1'])} ({vqa['n_open']} items)"
        )
    if cis:
        meta = result["confidence_intervals"]
        lines.append(f"[low, high]: {int(meta['level'] * 100)}% {meta['method']} "
                     f"({meta['resamples']} resamples, seed {meta['seed']}, {meta['n_studies']} studies)")
    return "\n".join(lines)



def add_learned_metrics(result: Dict[str, object], records: Sequence[Dict[str, object]],
                        settings: Optional[Dict[str, object]]) -> None:
    """CheXbert / RadGraph F1 of the report samples into ``result`` when their packages and files are local."""
    from xraygpt.evaluation.learned_metrics import learned_scores

    report = result.get("report")
    if not report:
        return
    pairs = [(r["prediction"], r["reference"]) for r in records if not r.get("question")]
    scores, notes = learned_scores([p for p, _ in pairs], [t for _, t in pairs], settings)
    report["learned_metrics"] = scores
    report["notes"].extend(notes)
    result["summary"].update(scores)
