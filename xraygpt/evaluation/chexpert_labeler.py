"""Rule-based CheXpert-style labeler: 14 observations, each positive / negative / uncertain / blank.

Why rules and not a neural labeler (CheXbert): no weights can be downloaded here and the rules are
transparent. The pipeline follows the CheXpert labeler's three stages, with our own phrase lists:

1. **Mention extraction** - per observation, regular expressions over a normalised report (lower
   case, OpenI's ``x-XXXX`` read as ``x-ray``; the other ``XXXX`` anonymisation tokens stay as
   opaque words, so ``no XXXX of a pleural effusion`` is still negated).
2. **Classification** of each mention inside its clause (sentences split at ``.``/``;``/``:``/new
   lines, clauses at ``but``, ``however``, ``although``, ``except``, ``otherwise``, ``, there is``...):
   * uncertain after the mention (``... cannot be excluded``, ``X versus Y``, ``... is possible``) wins;
   * otherwise a negation before the mention in its clause (``no``, ``not``, ``without``, ``negative
     for``, ``free of``, ``clear of``, ``no evidence of``, ``resolution of``...) makes it negative: the
     scope runs through lists (``no consolidation, suspicious opacity, or effusion``) and ``no X to
     suggest Y`` negates Y;
   * otherwise a hedge before it *within the same comma segment* makes it uncertain (``possible``,
     ``may``, ``could``, ``likely``, ``probable``, ``suggestive of``, ``suspicious for``, ``concerning
     for``, ``cannot exclude``, ``borderline``, ``differential ...``, ``versus``, ``?``);
     ``likely`` counts as uncertain and ``consistent with`` / ``compatible with`` as positive, the
     CheXpert conventions;
   * otherwise a negation after the mention (``... is not seen``, ``... has resolved``/``cleared``, ``removed``);
   * otherwise positive. ``no change`` / ``no interval change`` are not negations (the finding persists).
3. **Aggregation** per report: positive if any mention is positive, else uncertain if any is, else
   negative if any is, else blank. ``No Finding`` is positive when the report has text and none of the
   12 pathology observations (all but No Finding and Support Devices) is positive or uncertain;
   otherwise blank. An empty report is all blank.

Statements of normality for the heart and mediastinum (``heart size is normal``) give negative mentions
of Cardiomegaly / Enlarged Cardiomediastinum, like the CheXpert labeler. A fracture in the same
clause as orthopaedic or device hardware (``the screw is fractured``) is a device fracture, not a
bone fracture, and is not counted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Pattern, Sequence, Tuple

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
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


def _rx(*alternatives: str) -> Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


_CARDIAC = r"(?:heart|cardiac)(?: size| silhouette| shadow| contours?)?"
_MEDIASTINAL = r"(?:cardio ?mediastin\w*|mediastin\w*)(?: silhouette| contours?| size| width)?"
_NORMAL = r"(?:normal|unremarkable|within normal limits|upper limits? of normal|stable|maintained|not enlarged)"

# Mentions that are findings (their label is then decided by negation / uncertainty).
MENTION_PATTERNS: Dict[str, Pattern[str]] = {
    "Enlarged Cardiomediastinum": _rx(
        rf"\b{_MEDIASTINAL}(?: \w+){{0,3}}? (?:widen\w*|enlarg\w*|prominen\w*)",
        r"\b(?:widen\w*|enlarg\w*|prominen\w*) (?:of )?(?:the )?(?:superior )?(?:cardio ?)?mediastin\w*",
        r"\bmediastinal (?:widening|enlargement|mass)",
    ),
    "Cardiomegaly": _rx(
        r"\bcardiomegaly\b",
        rf"\b{_CARDIAC}(?: \w+){{0,3}}? (?:enlarged|enlargement|increased|large)\b",
        r"\b(?:enlarg\w*|increased) (?:of )?(?:the )?(?:heart|cardiac silhouette|cardiac size|cardiac shadow)\b",
    ),
    "Lung Lesion": _rx(
        r"\bnodul(?:e|es|ar|arity)\b",
        r"\bmass(?:es)?\b",
        r"\b(?<!bony )(?<!bone )(?<!lytic )(?<!osseous )(?<!sclerotic )(?<!skin )lesions?\b",
        r"\btumou?rs?\b",
        r"\bneoplas\w*",
        r"\bcarcinoma\w*",
        r"\bmalignan\w*",
        r"\bcavitation\b",
    ),
    "Lung Opacity": _rx(
        r"\b(?<!pleural )opaci(?:ty|ties|fication|fications|fied)\b",
        r"\binfiltrat\w*",
        r"\bair ?space (?:disease|process|abnormalit\w*|opacit\w*)",
        r"\b(?<!bone )(?<!soft tissue )densit(?:y|ies)\b",
        r"\bground[- ]glass\b",
        r"\breticul\w* (?:markings|pattern|opacit\w*)",
        r"\bparenchymal (?:disease|abnormalit\w*)",
    ),
    "Edema": _rx(r"\bedema\b", r"\b(?:vascular|pulmonary|venous) congestion\b", r"\bchf\b"),
    "Consolidation": _rx(r"\bconsolidat\w*"),
    "Pneumonia": _rx(r"\b(?:broncho)?pneumoni\w*", r"\binfectious process\b"),
    "Atelectasis": _rx(
        r"\batelecta\w*",
        r"\b(?:lobar|lobe|lung) collapse\b",
        r"\bcollapse of the(?: \w+){0,3}? (?:lobe|lung)\b",
    ),
    "Pneumothorax": _rx(r"\b\w*pneumothora\w*"),
    "Pleural Effusion": _rx(
        r"\b(?<!pericardial )(?<!joint )effusions?\b",
        r"\bpleural fluid\b",
        r"\bhydrothorax\b",
        r"\bblunt\w*(?: of)?(?: the)?(?: \w+)? costophrenic\b",
        r"\bcostophrenic (?:angles? )?blunting\b",
    ),
    "Pleural Other": _rx(
        r"\bpleural (?:thickening|plaques?|scar\w*|calcification\w*|opacit\w*)",
        r"\bcalcified pleura\w*",
        r"\bthickening of the pleura\b",
        r"\bfibrothorax\b",
        r"\bpleuroparenchymal (?:scar\w*|thickening)",
    ),
    "Fracture": _rx(r"\bfractur\w*"),
    SUPPORT_DEVICES: _rx(
        r"\b(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|chest|et|ng|og|enteric|nephrostomy) tubes?\b",
        r"\btubes?\b",
        r"\btubing\b",
        r"\btracheostomy\b",
        r"\bcatheters?\b",
        r"\bpicc\b",
        r"\b(?:central|venous|arterial|jugular|subclavian|dialysis|hickman)(?: venous)? lines?\b",
        r"\bport-?a-?cath\b|\bmediport\b|\bport\b",
        r"\bpace(?:maker|r)s?\b",
        r"\b(?:defibrillator|aicd|icd)\b",
        r"\b(?:pacemaker|pacer|icd|aicd|cardiac|epicardial|transvenous) (?:leads?|wires?)\b",
        r"\b(?:sternotomy|sternal|surgical|cerclage|epicardial) wires?\b",
        r"\bstents?\b",
        r"\b(?:surgical |postsurgical |vascular )?clips?\b",
        r"\bhardware\b",
        r"\bprosthe\w*",
        r"\bvalve replacement\b",
        r"\bshunt\b",
        r"\bdrains?\b",
        r"\bdevices?\b",
        r"\bstimulator\b",
        r"\b(?:screw|plate|rod) fixation\b|\bscrews?\b|\bplates?\b(?![- ]like)",
        r"\bfixation\b",
        r"\b(?:ivc|vena cava) filter\b",
        r"\bcoils?\b",
        r"\bstaples?\b",
        r"\bswan[- ]ganz\b",
    ),
}

# Statements of normality that give a negative mention (as the CheXpert labeler does).
NORMAL_PATTERNS: Dict[str, Pattern[str]] = {
    "Cardiomegaly": _rx(
        rf"\b{_CARDIAC}(?: \w+){{0,4}}? {_NORMAL}",
        r"\bnormal(?: \w+)? (?:heart|cardiac) (?:size|silhouette)\b",
    ),
    "Enlarged Cardiomediastinum": _rx(
        rf"\b{_MEDIASTINAL}(?: \w+){{0,4}}? {_NORMAL}",
        r"\bnormal (?:cardio ?)?mediastin\w*",
    ),
}

# Hardware in the clause makes a "fracture" a device fracture.
_HARDWARE = re.compile(r"\b(?:screws?|wires?|leads?|hardware|plates?|rods?|pins?|prosthe\w*|devices?|catheters?|tubes?)\b")

# Not negations although they contain "no"/"not"/"without": the finding is still there.
_PSEUDO_NEGATION = _rx(
    r"\bno (?:significant |interval |appreciable |substantial |definite )*"
    r"(?:change|increase|decrease|progression|worsening|improvement)\b",
    r"\bwithout (?:significant |interval |appreciable )*change\b",
    r"\bnot (?:significantly )?changed\b",
    r"\bnot only\b",
)

_PRE_UNCERTAINTY = _rx(
    r"\b(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely |totally )?(?:exclude[ds]?|ruled? out)\b",
    r"\bdifficult to (?:exclude|rule out)\b",
    r"\b(?:to )?(?:rule out|exclude)\b|\br/o\b",
    r"\bpossib(?:le|ly|ility)\b",
    r"\bprobabl[ey]\b",
    r"\b(?:most )?likely\b",
    r"\b(?:may|might|could)\b",
    r"\bsuggest(?:s|ive|ing|ion)?\b(?<!to suggest)",
    r"\b(?:suspicious|suspicion|concern(?:ing)?|worrisome|question(?:able)?)(?: for| of)?\b",
    r"\bsuspect(?:ed)?\b",
    r"\bequivocal\b",
    r"\bindeterminate\b",
    r"\bborderline\b",
    r"\bdifferential(?: diagnosis)?(?: includes?| of| considerations?)?\b",
    r"\b(?:versus|vs)\b",
    r"\bconsider(?:ed|ation)?\b",
    r"\bpresumed\b",
    r"\bperhaps\b",
    r"\bpotential\b",
    r"\?",
)
_PRE_NEGATION = _rx(
    r"\bno\b",
    r"\bnot\b",
    r"\bn't\b",
    r"\bnor\b",
    r"\bneither\b",
    r"\bwithout\b",
    r"\bnegative for\b",
    r"\bfree of\b",
    r"\bclear of\b",
    r"\babsence of\b",
    r"\bresolution of\b",
    r"\bremoval of\b",
    r"\bruled out\b",
)
_POST_UNCERTAINTY = _rx(
    r"^\W*(?:versus|vs)\b",
    r"\b(?:is|are) (?:possible|suspected|questioned|questionable|likely|probable|a consideration|a possibility)\b",
    r"\b(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely )?(?:excluded|ruled out)\b",
    r"\b(?:may|might|could) (?:also )?be (?:present|seen)\b",
)
_POST_NEGATION = _rx(
    r"\b(?:is|are|was|were|has been|have been)? ?(?:not|no longer) "
    r"(?:seen|identified|present|visualized|evident|demonstrated|appreciated|noted|detected)\b",
    r"\b(?:has |have )?(?:resolved|cleared)\b",
    r"\b(?:is |are )?absent\b",
    r"\b(?:has |have )?(?:been )?removed\b",
)

_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[;:\n]")
_CLAUSE_SPLIT = _rx(
    r"\b(?:but|however|although|though|except|whereas|otherwise|yet)\b",
    r"\b(?:aside|apart) from\b",
    r",? and there (?:is|are)\b|, there (?:is|are)\b",
)


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
    text = re.sub(r"\bx-xxxx\b", "x-ray", str(text).lower())
    return " ".join(text.split())


def _clauses(text: str) -> Iterable[str]:
    for sentence in _SENTENCE_SPLIT.split(text):
        for clause in _CLAUSE_SPLIT.split(sentence):
            clause = clause.strip(" ,")
            if clause:
                yield clause


def _mask(text: str, pattern: Pattern[str]) -> str:
    """Blank out matches so that words inside them (e.g. the 'not' of 'cannot exclude') stop counting."""
    return pattern.sub(lambda m: "_" * len(m.group()), text)


def classify(before: str, after: str) -> int:
    """Label of a mention from the clause text before and after it."""
    before, after = _mask(before, _PSEUDO_NEGATION), _mask(after, _PSEUDO_NEGATION)
    if _POST_UNCERTAINTY.search(after):
        return UNCERTAIN
    if _PRE_NEGATION.search(_mask(before, _PRE_UNCERTAINTY)):
        return NEGATIVE
    # Hedges reach only to the next comma; negations run through lists ("no A, B, or C").
    if _PRE_UNCERTAINTY.search(before.rsplit(",", 1)[-1]):
        return UNCERTAIN
    if _POST_NEGATION.search(after):
        return NEGATIVE
    return POSITIVE


def find_mentions(report: object) -> List[Mention]:
    """All observation mentions of a report, each with its clause-level label."""
    mentions: List[Mention] = []
    for clause in _clauses(normalise_report(report)):
        for observation, pattern in MENTION_PATTERNS.items():
            for match in pattern.finditer(clause):
                if observation == "Fracture" and _HARDWARE.search(clause):
                    continue
                # The mention's own leading words count as context ("heart is not enlarged").
                head = match.group().rsplit(" ", 1)[0] + " " if " " in match.group() else ""
                label = classify(clause[: match.start()] + head, clause[match.end():])
                mentions.append(Mention(observation, match.group(), label, clause))
        for observation, pattern in NORMAL_PATTERNS.items():
            for match in pattern.finditer(clause):
                mentions.append(Mention(observation, match.group(), NEGATIVE, clause))
    return mentions


def aggregate(mentions: Sequence[Mention], has_text: bool = True) -> Dict[str, Label]:
    """Report-level labels: positive > uncertain > negative > blank; then the No Finding rule."""
    labels: Dict[str, Label] = {o: None for o in OBSERVATIONS}
    for observation in OBSERVATIONS:
        found = {m.label for m in mentions if m.observation == observation}
        for label in (POSITIVE, UNCERTAIN, NEGATIVE):
            if label in found:
                labels[observation] = label
                break
    abnormal = any(labels[o] in (POSITIVE, UNCERTAIN) for o in PATHOLOGIES)
    labels[NO_FINDING] = POSITIVE if has_text and not abnormal else None
    return labels


def label_report(report: object) -> Dict[str, Label]:
    """CheXpert-style labels (1, 0, -1 or None) of one free-text report, keyed by observation."""
    return aggregate(find_mentions(report), has_text=bool(normalise_report(report)))


def label_reports(reports: Iterable[object]) -> List[Dict[str, Label]]:
    return [label_report(r) for r in reports]
