"""Rule-based CheXpert-style labeler: 14 observations, each positive / negative / uncertain / blank.

Why rules and not a neural labeler (CheXbert): no weights can be downloaded here, the rules are
transparent, and they run at thousands of reports per second. The pipeline follows the CheXpert
labeler's documented stages (Irvin et al. 2019) with our own phrase lists (``labeler_phrases``) and
cue rules (``labeler_context``):

1. **Mention extraction** per observation over a normalised report (lower case; OpenI's ``x-XXXX``
   read as ``x-ray``; other ``XXXX`` tokens stay opaque words, so ``no XXXX of a pleural effusion`` is
   still negated). *Unmention* phrases are masked first (``pericardial effusion``, ``bony
   lesion``, ``surgical clips``, ``platelike``, ``endplate``).
2. **Classification** of each mention inside its clause (sentences split at ``. ; :``, clauses at
   ``but``, ``however``, ``although``, ``, there is`` ...): pre-negation uncertainty, negation,
   uncertainty, in that order (see ``labeler_context``).
   The heart and mediastinum are also read from their predicate (``heart size is normal`` -> negative
   Cardiomegaly, ``stable cardiomediastinal silhouette`` -> uncertain Enlarged Cardiomediastinum,
   ``borderline heart size`` / ``upper limits of normal`` -> uncertain, ``is enlarged`` -> positive).
   Some phrases are signs rather than the finding, and are uncertain even when asserted
   (``vascular congestion`` -> uncertain Edema).
3. **Aggregation** per report: positive > uncertain > negative > blank across mentions. ``No Finding``
   is positive when the report has text, none of the 12 pathologies is positive or uncertain, and no
   "other finding" (degenerative change, granuloma, emphysema, hernia...) is asserted; otherwise blank.
   Support devices do not count against No Finding (the CheXpert convention).

A fracture in the same clause as orthopaedic or device hardware (``the screw is fractured``) is a
device fracture, not a bone fracture. Where the CheXpert labeler's output is plainly wrong
(``heart size within normal limits`` -> Cardiomegaly 1, ``endplate`` / ``platelike`` / ``tuberculosis``
-> Support Devices), we keep the clinical reading; docs/evaluation.md lists these cases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from xraygpt.evaluation.labeler_context import NEGATIVE, POSITIVE, UNCERTAIN, classify, mask
from xraygpt.evaluation.labeler_phrases import (
    HEDGED_MENTIONS,
    MENTIONS,
    OTHER_FINDINGS,
    STRUCTURE_STATES,
    STRUCTURE_TRIGGERS,
    STRUCTURES,
    TRIGGERS,
    UNMENTIONS,
    rx,
)

Label = Optional[int]  # 1, 0, -1 or None (blank), the CheXpert CSV convention

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
OBSERVATIONS: Tuple[str, ...] = (
    NO_FINDING,
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    SUPPORT_DEVICES,
)
PATHOLOGIES: Tuple[str, ...] = tuple(o for o in OBSERVATIONS if o not in (NO_FINDING, SUPPORT_DEVICES))
OTHER_FINDING = "other finding"  # pseudo-observation of mentions that only block No Finding

__all__ = [
    "NEGATIVE", "NO_FINDING", "OBSERVATIONS", "PATHOLOGIES", "POSITIVE", "SUPPORT_DEVICES", "UNCERTAIN",
    "Label", "Mention", "aggregate", "classify", "find_mentions", "label_report", "label_reports",
    "normalise_report",
]

# Hardware in the clause makes a "fracture" a device fracture.
_HARDWARE = re.compile(r"\b(?:screws?|wires?|leads?|hardware|plates?|rods?|pins?|prosthe\w*|devices?|catheters?|"
                       r"tubes?|sternotomy)\b")
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[;:\n]|\s\d\.\s")
_CLAUSE_SPLIT = rx(
    r"\b(?:but|however|although|though|except|whereas|otherwise|yet)\b",
    r"\b(?:aside|apart) from\b",
    r",? and there (?:is|are)\b|, there (?:is|are)\b|, (?=(?:no|not)\b)",
)
_ENTITY = re.compile(r"&(?:gt|lt|amp);")


@dataclass(frozen=True)
class Mention:
    """One phrase found in a report, with the label its context gives it."""

    observation: str
    text: str
    label: int
    clause: str


def normalise_report(text: object) -> str:
    """Lower case, single spaces; OpenI's ``x-XXXX`` becomes ``x-ray``. NaN/None become ''."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = _ENTITY.sub(" ", re.sub(r"\bx-xxxx\b", "x-ray", str(text).lower()))
    return " ".join(text.split())


def _clauses(text: str) -> Iterable[str]:
    for sentence in _SENTENCE_SPLIT.split(text):
        for clause in _CLAUSE_SPLIT.split(sentence):
            clause = clause.strip(" ,")
            if clause:
                yield clause


def _structure_state(clause: str, start: int, end: int) -> Optional[int]:
    """The state a predicate gives the heart / mediastinum named at clause[start:end], if any."""
    before = clause[:start].rsplit(",", 1)[-1]
    after = clause[end:]
    # The predicate follows the subject list ("heart size, mediastinal contour ... are normal");
    # the words just before the structure are its modifiers ("borderline heart size").
    segment = before[-40:] + " " + clause[start:end] + " " + after
    for label, pattern in STRUCTURE_STATES:
        if pattern.search(segment):
            return label
    return None


def _literal_rx(words: Tuple[str, ...]) -> "re.Pattern[str]":
    return re.compile("|".join(re.escape(w) for w in words))


_TRIGGER_RX = {o: _literal_rx(t) for o, t in TRIGGERS.items()}
_STRUCTURE_TRIGGER_RX = {o: _literal_rx(t) for o, t in STRUCTURE_TRIGGERS.items()}


@lru_cache(maxsize=1 << 16)
def _clause_mentions(clause: str, use_triggers: bool = True) -> Tuple[Mention, ...]:
    """Mentions of one clause. Cached: report corpora repeat sentences ("No pneumothorax.") endlessly."""
    mentions: List[Mention] = []
    for observation, pattern in MENTIONS.items():
        if use_triggers and not _TRIGGER_RX[observation].search(clause):
            continue
        if not pattern.search(clause):
            continue
        text = mask(clause, UNMENTIONS[observation]) if observation in UNMENTIONS else clause
        for match in pattern.finditer(text):
            if observation == "Fracture" and _HARDWARE.search(clause):
                continue
            # The mention's own leading words count as context ("heart is not enlarged").
            head = match.group().rsplit(" ", 1)[0] + " " if " " in match.group() else ""
            label = classify(clause[: match.start()] + head, clause[match.end():])
            if label == POSITIVE and observation in HEDGED_MENTIONS and HEDGED_MENTIONS[observation].search(match.group()):
                label = UNCERTAIN
            mentions.append(Mention(observation, match.group(), label, clause))
    for observation, pattern in STRUCTURES.items():
        if use_triggers and not _STRUCTURE_TRIGGER_RX[observation].search(clause):
            continue
        text = mask(clause, UNMENTIONS[observation])
        for match in pattern.finditer(text):
            state = _structure_state(clause, match.start(), match.end())
            if state is None:
                continue
            if state == POSITIVE:
                state = classify(clause[: match.start()], clause[match.end():])
            mentions.append(Mention(observation, match.group(), state, clause))
    for match in OTHER_FINDINGS.finditer(clause):
        label = classify(clause[: match.start()], clause[match.end():])
        mentions.append(Mention(OTHER_FINDING, match.group(), label, clause))
    return tuple(mentions)


def find_mentions(report: object) -> List[Mention]:
    """All observation mentions of a report, each with its clause-level label."""
    mentions: List[Mention] = []
    for clause in _clauses(normalise_report(report)):
        mentions.extend(_clause_mentions(clause))
    return mentions


def aggregate(mentions: Sequence[Mention], has_text: bool = True) -> Dict[str, Label]:
    """Report-level labels: positive > uncertain > negative > blank; then the No Finding rule."""
    found: Dict[str, set] = {}
    for m in mentions:
        found.setdefault(m.observation, set()).add(m.label)
    labels: Dict[str, Label] = {o: None for o in OBSERVATIONS}
    for observation in OBSERVATIONS:
        for label in (POSITIVE, UNCERTAIN, NEGATIVE):
            if label in found.get(observation, ()):
                labels[observation] = label
                break
    abnormal = any(labels[o] in (POSITIVE, UNCERTAIN) for o in PATHOLOGIES)
    other = bool(found.get(OTHER_FINDING, set()) & {POSITIVE, UNCERTAIN})
    labels[NO_FINDING] = POSITIVE if has_text and not abnormal and not other else None
    return labels


def label_report(report: object) -> Dict[str, Label]:
    """CheXpert-style labels (1, 0, -1 or None) of one free-text report, keyed by observation."""
    return aggregate(find_mentions(report), has_text=bool(normalise_report(report)))


def label_reports(reports: Iterable[object]) -> List[Dict[str, Label]]:
    return [label_report(r) for r in reports]
