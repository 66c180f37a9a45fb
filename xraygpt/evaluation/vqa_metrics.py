"""VQA scores: exact-match accuracy for closed (yes/no) questions, token F1 for open ones.

A question is *closed* when its reference answer is "yes" or "no" (the VQA-RAD / SLAKE convention) or
starts with one ("No, there is no pleural effusion.", as the phantom and offline OpenI items answer). A generated answer is read as yes/no from its first word ("Yes, there is a small
effusion." -> yes), so a chatty model is not penalised for explaining itself. Open answers are
compared with SQuAD-style token F1 after lower-casing and removing punctuation and articles.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Dict, List, Optional, Sequence

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
_YES_NO = {"yes": "yes", "yeah": "yes", "true": "yes", "no": "no", "not": "no", "false": "no", "none": "no"}


def normalise_answer(text: str) -> str:
    text = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def closed_answer(text: str) -> Optional[str]:
    """'yes' / 'no' from the first word of an answer, or None when it does not start with one."""
    words = normalise_answer(text).split()
    return _YES_NO.get(words[0]) if words else None


def is_closed(reference: str) -> bool:
    words = normalise_answer(reference).split()
    return bool(words) and words[0] in ("yes", "no")


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_vqa(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, object]:
    """Closed-question accuracy, open-question token F1 (and exact match), with per-item scores."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} answers but {len(references)} reference answers")
    per_item: List[Dict[str, object]] = []
    closed_hits: List[float] = []
    open_f1: List[float] = []
    open_exact: List[float] = []
    for pred, ref in zip(predictions, references):
        if is_closed(ref):
            score = float(closed_answer(pred) == closed_answer(ref))
            closed_hits.append(score)
            per_item.append({"type": "closed", "score": score})
        else:
            f1 = token_f1(pred, ref)
            open_f1.append(f1)
            open_exact.append(float(normalise_answer(pred) == normalise_answer(ref)))
            per_item.append({"type": "open", "score": f1, "exact": open_exact[-1]})

    def mean(values: List[float]) -> Optional[float]:
        return sum(values) / len(values) if values else None

    return {
        "closed_accuracy": mean(closed_hits),
        "open_token_f1": mean(open_f1),
        "open_exact_match": mean(open_exact),
        "n_closed": len(closed_hits),
        "n_open": len(open_f1),
        "per_item": per_item,
    }
