"""Laterality, location and severity of a finding, read from the words around its mention.

Rules, not a model: each value is a phrase of the evidence sentence (or null), so a reader can see
where it came from.  The scope of a finding is its *segment*: the sentence cut at commas, ``and``,
``with`` and ``;``, so "small left effusion and right lower lobe consolidation" gives the effusion
the left side and the consolidation the right.  Side words in segments just before it that name no
finding of their own ("left and right pleural effusions") belong to it too, and so do segments just
after it that name none ("left pleural effusion, moderate").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

_SEGMENT_SPLIT = re.compile(r",|;|\band\b|\bwith\b|\bas well as\b|\bplus\b", re.IGNORECASE)
_LEFT = re.compile(r"\bleft\b|\blt\b", re.IGNORECASE)
_RIGHT = re.compile(r"\bright\b|\brt\b", re.IGNORECASE)
_BOTH = re.compile(r"\bbilateral(?:ly)?\b|\bboth\b|\bbibasilar\b|\bbibasal\b", re.IGNORECASE)

_LOCATION = re.compile(
    r"(?:\b(?:left|right)\s+)?(?:\b(?:upper|middle|mid|lower)\s+(?:lobes?|lung(?: zones?| fields?)?)\b)"
    r"|\blingula(?:r)?(?: segment)?\b"
    r"|(?:\b(?:left|right)\s+)?(?:\blung\s+)?\b(?:bases|base|apex|apices)\b"
    r"|(?:\b(?:left|right)\s+)?\b(?:apical|basilar|bibasilar|perihilar|hilar|retrocardiac|paratracheal|subpleural|suprahilar|infrahilar)\b(?:\s+(?:region|area|zone))?"
    r"|(?:\b(?:posterior|lateral|left|right)\s+)*\bcostophrenic\s+(?:angles?|recess(?:es)?|sulcus|sulci)\b"
    r"|\b(?:left|right)\s+(?:hemithorax|lung|chest)\b",
    re.IGNORECASE,
)
_SEVERITY = re.compile(
    r"\b(?:trace|tiny|minimal|small|mild|moderate|large|severe|massive|extensive|marked|moderate-sized|small-to-moderate)\b"
    r"|\b\d+(?:\.\d+)?\s?(?:mm|cm)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Attributes:
    laterality: Optional[str]
    location: Optional[str]
    severity: Optional[str]
    segment: int  # index of the segment holding the mention (-1: the whole sentence), for ordering


def segments(sentence: str) -> List[str]:
    return [s.strip() for s in _SEGMENT_SPLIT.split(sentence) if s.strip()]


def laterality_of(text: str) -> Optional[str]:
    """left / right / bilateral / None from the side words in ``text``."""
    if _BOTH.search(text):
        return "bilateral"
    left, right = bool(_LEFT.search(text)), bool(_RIGHT.search(text))
    if left and right:
        return "bilateral"
    return "left" if left else "right" if right else None


def _first(pattern: re.Pattern, texts: Sequence[str]) -> Optional[str]:
    for text in texts:
        match = pattern.search(text)
        if match:
            return " ".join(match.group().split())
    return None


def attributes_of(sentence: str, mentions: Callable[[str], bool], names_any: Callable[[str], bool]) -> Attributes:
    """Attributes of the finding whose mentions ``mentions(segment)`` detects, inside ``sentence``.

    ``names_any(segment)`` says whether a segment mentions any finding at all; leading segments that
    do not, just before or after it, are taken into the scope.  When no single segment holds the
    mention (it spans a cut), the whole sentence is the scope.
    """
    parts = segments(sentence)
    found = [i for i, part in enumerate(parts) if mentions(part)]
    if not found:
        return Attributes(laterality_of(sentence), _first(_LOCATION, [sentence]), _first(_SEVERITY, [sentence]), -1)
    scopes = [_scope(parts, i, names_any) for i in found]
    # Two mentions in one sentence ("a small right ... and a moderate left pleural effusion") join their sides.
    sides = {laterality_of(" ".join(scope)) for scope in scopes} - {None}
    laterality = "bilateral" if "bilateral" in sides or len(sides) > 1 else next(iter(sides), None)
    return Attributes(laterality, _first(_LOCATION, scopes[0]), _first(_SEVERITY, scopes[0]), found[0])


def _scope(parts: Sequence[str], found: int, names_any: Callable[[str], bool]) -> List[str]:
    """The mention's segment first (its location and severity win), then the finding-free neighbours."""
    first = last = found
    while first > 0 and not names_any(parts[first - 1]):
        first -= 1
    while last + 1 < len(parts) and not names_any(parts[last + 1]):
        last += 1
    return [parts[found], *parts[first:found], *parts[found + 1 : last + 1]]
