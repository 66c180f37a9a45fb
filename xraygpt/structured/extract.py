"""*Extract* mode: a structured report derived from prose, every field traceable to one sentence.

The status of each observation comes from the project's CheXpert-style labeler applied to each
sentence on its own (its public :func:`label_report` only): present if any sentence states it,
else uncertain if any hedges it, else absent, the labeler's own precedence.  The sentences are cut
only where the labeler cuts too, so the statuses equal ``label_report`` of the whole text.  The
evidence is the first sentence that gives the winning status; laterality, location and severity are
read from that sentence by :mod:`xraygpt.structured.attributes`.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from xraygpt.evaluation.chexpert_labeler import NO_FINDING, OBSERVATIONS, label_report
from xraygpt.structured.attributes import attributes_of
from xraygpt.structured.schema import SCHEMA_VERSION

FINDING_OBSERVATIONS: Tuple[str, ...] = tuple(o for o in OBSERVATIONS if o != NO_FINDING)
STATUS_OF_LABEL = {1: "present", -1: "uncertain", 0: "absent"}
_PRECEDENCE = ("present", "uncertain", "absent")

# A sentence ends at a full stop that is not a decimal point, or at a line break.
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)\s*|\n+")
_HEADER = re.compile(r"^\s*(?:findings|impression|conclusion|comparison|indication|technique)\s*:\s*", re.IGNORECASE)
_IMPRESSION = re.compile(r"\bimpression\s*:\s*", re.IGNORECASE)


def sentences(report: str) -> List[str]:
    """The report's sentences as written (section headers removed), in order, each with its full stop."""
    out: List[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(report):
        piece = report[start : match.end()]
        start = match.end()
        _append_sentence(out, piece)
    _append_sentence(out, report[start:])
    return out


def _append_sentence(out: List[str], piece: str) -> None:
    piece = piece.strip()
    while _HEADER.match(piece):
        piece = _HEADER.sub("", piece, count=1).strip()
    if piece.strip(" .") and re.search(r"\w", piece):
        out.append(piece)


def impression_of(report: str) -> str:
    """The text after the last ``Impression:`` heading; '' when the report has none."""
    parts = _IMPRESSION.split(report)
    return " ".join(parts[-1].split()) if len(parts) > 1 else ""


def _mentioned(labels: Mapping[str, Optional[int]]) -> Dict[str, str]:
    return {o: STATUS_OF_LABEL[labels[o]] for o in FINDING_OBSERVATIONS if labels[o] is not None}


def _status_in(text: str, observation: str) -> Optional[str]:
    return _mentioned(label_report(text)).get(observation)


def _names_any(text: str) -> bool:
    return bool(_mentioned(label_report(text)))


def extract_findings(report: str) -> List[Dict[str, Any]]:
    """One finding per mentioned observation, in the order the report first gives its status."""
    per_sentence = [(text, _mentioned(label_report(text))) for text in sentences(report)]
    chosen: Dict[str, Tuple[int, str, str]] = {}  # observation -> (sentence index, sentence, status)
    for observation in FINDING_OBSERVATIONS:
        statuses = [(i, text, found[observation]) for i, (text, found) in enumerate(per_sentence) if observation in found]
        for status in _PRECEDENCE:
            hit = next((s for s in statuses if s[2] == status), None)
            if hit:
                chosen[observation] = hit
                break
    placed = []
    for observation, (index, sentence, status) in chosen.items():
        attrs = attributes_of(sentence, lambda seg, o=observation, s=status: _status_in(seg, o) == s, _names_any)
        placed.append(((index, attrs.segment, FINDING_OBSERVATIONS.index(observation)), observation, status, sentence, attrs))
    findings = []
    for _, observation, status, sentence, attrs in sorted(placed, key=lambda p: p[0]):
        findings.append({
            "observation": observation,
            "status": status,
            "laterality": attrs.laterality,
            "location": attrs.location,
            "severity": attrs.severity,
            "evidence": sentence,
        })
    return findings


def extract_report(report: str, generator: Mapping[str, Any]) -> Dict[str, Any]:
    """The structured report (schema v1) of a prose report; ``generator`` is its metadata block."""
    text = report or ""
    return {
        "schema_version": SCHEMA_VERSION,
        "findings": extract_findings(text),
        "impression": impression_of(text),
        "no_finding": label_report(text)[NO_FINDING] == 1,
        "generator": dict(generator),
    }
