"""Structured scores of an evaluation run's records (the glue between ``xraygpt.evaluate`` and the scorer)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

from xraygpt.evaluation.structured_scores import score_structured, structured_summary
from xraygpt.structured.reports import model_generator, structured_from_text, structured_of_prediction


def add_structured_scores(result: Dict[str, Any], records: Sequence[Mapping[str, Any]], model: Any, name: str,
                          settings: Mapping[str, Any]) -> None:
    """Score the report records of an evaluation run per field, into ``result`` (summary, per sample)."""
    generator = model_generator(model, "extract", name, settings)
    reference_generator = {**generator, "model": "reference text", "checkpoint_sha256": None}
    indices = [i for i, r in enumerate(records) if not r.get("question")]
    predicted = [structured_of_prediction(records[i]["prediction"], generator) for i in indices]
    reference = [structured_from_text(records[i]["reference"], reference_generator) for i in indices]
    scores = score_structured(predicted, reference)
    for i, pred, sample in zip(indices, predicted, scores.pop("per_sample")):
        result["per_sample"][i].update(structured=pred, structured_status=sample)
    result["structured"] = scores
    result["summary"].update(structured_summary(scores))
