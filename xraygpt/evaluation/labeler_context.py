"""Negation and uncertainty of one mention, from the words of its clause before and after it.

The CheXpert labeler runs three rule sets on a dependency parse, in order: *pre-negation
uncertainty* ("cannot exclude X": uncertain although it contains "not"), *negation* ("no X",
"X is not seen"), then *post-negation uncertainty* ("possible X", "X versus Y", "A or B"). We follow
the same order with cue phrases and scopes over the clause text:

* pre-negation uncertainty before or after the mention wins;
* a negation cue before the mention negates it through a list ("no A, B, or C"), unless a
  positive-assertion word ("there is", "with", "demonstrates") intervenes after the cue;
* a hedge before the mention makes it uncertain through a list of findings ("may be secondary to
  crowding, infiltrates or edema"), but not past a new statement that has its own verb;
* "A or B" / "A versus B" between findings makes both uncertain;
* a negation after the mention ("... is not seen", "... has resolved");
* otherwise positive.
"""
from __future__ import annotations

from typing import Pattern

from xraygpt.evaluation.labeler_phrases import rx

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# Not negations although they contain "no"/"not"/"without": the finding is still there.
PSEUDO_NEGATION: Pattern[str] = rx(
    r"\bno (?:significant |interval |appreciable |substantial |definite |major |marked |acute )*"
    r"(?:change|increase|decrease|progression|worsening|improvement|enlargement of the heart)\b(?! in (?:the )?(?:size|appearance) of)",
    r"\bwithout (?:significant |interval |appreciable )*change\b",
    r"\bnot (?:significantly |substantially )?changed\b",
    r"\bnot only\b",
    r"\bnot (?:well |clearly |optimally )?(?:evaluated|assessed)\b",
)

# "Cannot exclude X", "X cannot be ruled out": uncertain, although they contain a negation word.
PRE_NEGATION_UNCERTAINTY: Pattern[str] = rx(
    r"\b(?:cannot|can not|can't|could not|not|unable to|difficult to|hard to) (?:be )?(?:entirely |completely |"
    r"totally |definitely |fully |reliably )?(?:exclude[ds]?|ruled? out|excluded|differentiat\w*|distinguish\w*|"
    r"separate[ds]?)\b",
    r"\bnot (?:clearly |well |definitely )?(?:seen|visualized|appreciated)?(?: \w+)? (?:but|although)\b",
    r"\bno (?:definite|convincing|clear|discrete|obvious) (?:\w+ )?(?:but|although)\b",
)

HEDGE: Pattern[str] = rx(
    r"\b(?:to )?(?:rule out|exclude)\b|\br/o\b",
    r"\bpossib(?:le|ly|ility)\b",
    r"\bprobabl[ey]\b",
    r"\b(?:most |more )?likely\b",
    r"\b(?:may|might|could)\b",
    r"\bsuggest(?:s|ive|ing|ion)?\b(?<!to suggest)",
    r"\b(?:suspicious|suspicion|concern(?:ing)?|worrisome|question(?:able|ed)?)(?: for| of)?\b",
    r"\bsuspect(?:ed)?\b",
    r"\bequivocal\b",
    r"\bindeterminate\b",
    r"\bborderline\b",
    r"\bdifferential(?: diagnosis)?(?: includes?| of| considerations?)?\b",
    r"\b(?:versus|vs)\b",
    r"\bconsider(?:ed|ation)?\b",
    r"\bpresum(?:ed|ably|ptive)\b",
    r"\bperhaps\b",
    r"\bpotential(?:ly)?\b",
    r"\bnot (?:be )?excluded\b",
    r"\bcannot be excluded\b",
    r"\buncertain\b|\bunclear\b",
    r"\brepresent(?:s|ing)?\b(?= (?:\w+ ){0,3}(?:or|and/or)\b)",
    r"\bnonspecific\b|\bnon-specific\b",
    r"\bappear(?:s|ance)? (?:of|to be|to represent)\b",
    r"\bthought to (?:be|represent)\b",
    r"\bcorrelat\w* (?:clinically |with|for)\b",
    r"\bapparent(?:ly)?\b",
    r"\?",
)

NEGATION: Pattern[str] = rx(
    r"\bno\b",
    r"\bnot\b",
    r"\bn't\b",
    r"\bnor\b",
    r"\bneither\b",
    r"\bwithout\b",
    r"\bnegative for\b|\bnegative\b",
    r"\bfree of\b|\bfree from\b",
    r"\bclear of\b",
    r"\babsence of\b|\babsent\b",
    r"\bresolution of\b|\bresolved\b",
    r"\bclearing of\b|\bcleared\b",
    r"\bremoval of\b|\bremoved\b",
    r"\bruled out\b",
    r"\binstead of\b|\brather than\b",
    r"\bcannot identify\b",
    r"\bnone\b",
)

# After a negation cue, these start a new assertion: "no effusion, there is a small pneumothorax".
NEGATION_BREAK: Pattern[str] = rx(
    r"\b(?:there (?:is|are|has been|have been)|is present|are present|with|which|that|demonstrat\w*|"
    r"show(?:s|ing|n)?|noted|seen|identified|except|but|however|although|though)\b",
    r"\b(?:is|are|was|were) (?!not\b|no\b|seen\b|identified\b|present\b|noted\b|visualized\b|evident\b|demonstrated\b|"
    r"appreciated\b|detected\b)\w+",
)

# Hedges that modify one noun phrase ("borderline X") rather than a list.
MODIFIER_HEDGE: Pattern[str] = rx(r"borderline", r"possib\w*", r"probabl\w*", r"questionable", r"equivocal",
                                  r"indeterminate", r"presum\w*", r"potential\w*", r"apparent\w*", r"nonspecific",
                                  r"non-specific", r"(?:most |more )?likely", r"suspected")

# A hedge's scope runs through a list of findings but not into a new statement with its own verb.
HEDGE_BREAK: Pattern[str] = rx(
    r"\b(?:is|are|was|were|has|have|show\w*|demonstrat\w*|noted|seen|there)\b(?! (?:possible|likely|probabl\w*|"
    r"suspect\w*|question\w*|suggest\w*))",
    r"\b(?:no|not|without)\b",
    r"\b(?:with|and) (?:a |an |the )?(?:\w+ )?(?:tip|tube|line|catheter)\b",
)

POST_UNCERTAINTY: Pattern[str] = rx(
    r"^\W*(?:versus|vs)\b",
    r"^\W*(?:\w+ ){0,2}?(?:or|and/or)\b(?! (?:without|no)\b)",
    r"^\W*/(?! ?(?:ventilat|no\b))",
    r"\b(?:is|are|was|were) (?:\w+ )?(?:possible|suspected|questioned|questionable|likely|probable|"
    r"a consideration|a possibility|not excluded|uncertain|equivocal)\b",
    r"\b(?:cannot|can not|can't|could not|not|is not|are not) (?:be )?(?:entirely |completely |totally |definitely )?"
    r"(?:excluded|ruled out)\b",
    r"\b(?:may|might|could) (?:also )?be (?:present|seen)\b",
    r"\b(?:is|are) (?:not )?(?:entirely )?(?:certain|clear)\b",
    r"^\W*(?:\w+ ){0,4}?(?:is|are) (?:again )?(?:suggested|suspected|questioned|favored|considered)\b",
    r"^\W*\?",
    r"^\W*(?:\w+ ){0,3}?(?:suspected|suggested|questioned)\b",
)

POST_NEGATION: Pattern[str] = rx(
    r"^\W*(?:\w+ ){0,10}?(?:is|are|was|were|has been|have been)? ?(?:not|no longer|never) (?:\w+ )?"
    r"(?:seen|identified|present|visualized|evident|demonstrated|appreciated|noted|detected|visible|apparent|"
    r"recognized|shown|definitely seen)\b",
    r"^\W*(?:\w+ ){0,10}?(?:has |have )?(?:resolved|cleared)\b",
    r"^\W*(?:\w+ ){0,10}?(?:is |are )?(?:absent|gone)\b",
    r"^\W*(?:\w+ ){0,10}?(?:has |have )?(?:been )?removed\b",
    r"^\W*(?:\w+ ){0,4}?(?:is|are|was|were) negative\b",
)


def mask(text: str, pattern: Pattern[str]) -> str:
    """Blank out matches so the words inside them (the 'not' of 'cannot exclude') stop counting."""
    return pattern.sub(lambda m: "_" * len(m.group()), text)


def _negated_before(before: str) -> bool:
    """A negation cue before the mention whose scope is not closed by a new assertion."""
    last = None
    for last in NEGATION.finditer(before):
        pass
    if last is None:
        return False
    return not NEGATION_BREAK.search(before[last.end():])


def _hedged_before(before: str) -> bool:
    """A hedge before the mention, in scope: same comma segment, or a list of findings after it."""
    last = None
    for last in HEDGE.finditer(before):
        pass
    if last is None:
        return False
    rest = before[last.end():]
    if "," in rest and MODIFIER_HEDGE.fullmatch(last.group()):
        return False  # "borderline heart size, tracheostomy tube ...": a modifier hedges its own phrase only
    return not HEDGE_BREAK.search(rest)


def classify(before: str, after: str) -> int:
    """Label of a mention from the clause text before and after it (1, 0 or -1)."""
    before, after = mask(before, PSEUDO_NEGATION), mask(after, PSEUDO_NEGATION)
    if PRE_NEGATION_UNCERTAINTY.search(before) or PRE_NEGATION_UNCERTAINTY.search(after):
        return UNCERTAIN
    plain_before = mask(before, HEDGE)
    if _negated_before(plain_before):
        return NEGATIVE
    if _hedged_before(before):
        return UNCERTAIN
    if POST_NEGATION.search(after):
        return NEGATIVE
    if POST_UNCERTAINTY.search(after) or before.rstrip().endswith((" or", "/", " versus", " vs")):
        return UNCERTAIN
    return POSITIVE
