"""JSON-target training items: what a model fine-tuned for constrained decoding learns to write.

The target text is exactly what :mod:`xraygpt.structured.constrained` decodes (``content_json``), so
training and decoding agree token for token.  Only the content is a target; ``schema_version`` and
``generator`` are added by the program at inference time.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict

from xraygpt.structured.constrained import content_json
from xraygpt.structured.extract import extract_report
from xraygpt.structured.schema import StructuredReportError, validate_report

STRUCTURED_PROMPT = "Report the findings of this chest x-ray as JSON."
LLM_INSTRUCTION = (
    "Read the report and list every CheXpert observation it mentions (Enlarged Cardiomediastinum, Cardiomegaly, "
    "Lung Lesion, Lung Opacity, Edema, Consolidation, Pneumonia, Atelectasis, Pneumothorax, Pleural Effusion, "
    "Pleural Other, Fracture, Support Devices), at most once each. Answer as JSON: "
    '{"findings": [{"observation": "<name>", "status": "present|absent|uncertain", '
    '"laterality": "left|right|bilateral|null", "location": "<text or null>", "severity": "<text or null>", '
    '"evidence": "<the report sentence it comes from, copied exactly>"}], "impression": "<impression or empty>", '
    '"no_finding": true|false}. no_finding is true when no pathology is present or uncertain.'
)


def rule_target(report_text: str) -> str:
    """The offline target: the extract-mode reading of the report, as the constrained decoder writes it."""
    return content_json(extract_report(report_text, generator={}))


def _squash(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def llm_target(answer: str, source_text: str) -> str:
    """An LLM's structured answer, checked: schema-valid content, one item per observation, and every
    evidence a sentence of the source (ignoring case, spaces and punctuation).  Raises ValueError saying why."""
    try:
        content: Dict[str, Any] = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    try:
        validate_report(content, content_only=True, where="structured answer")
    except StructuredReportError as exc:
        raise ValueError(str(exc)) from None
    names = [f["observation"] for f in content["findings"]]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"structured answer lists {', '.join(repeated)} more than once")
    source = _squash(source_text)
    invented = [f["evidence"] for f in content["findings"] if _squash(f["evidence"]) not in source]
    if invented:
        raise ValueError(f"structured answer quotes evidence that is not in the report: {invented[0][:80]!r}")
    return content_json(content)
