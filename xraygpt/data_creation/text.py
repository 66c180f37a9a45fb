"""Report text clean-up shared by the filters and the offline generator."""
from __future__ import annotations

import re
from typing import List

# OpenI replaces identifying words with XXXX; "x-XXXX" is always "x-ray" in these reports.
_XRAY_TOKEN = re.compile(r"\bx-XXXX\b", re.IGNORECASE)
_ENUMERATOR = re.compile(r"(?:(?<=^)|(?<=\s))\d{1,2}[.)]\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[a-z]\.)(?=[A-Z])")


def split_sentences(text: str) -> List[str]:
    text = _ENUMERATOR.sub("", " ".join(text.split()))
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def clean_report_text(text: str) -> str:
    """Whitespace normalised, list numbers removed, sentences still holding ``XXXX`` dropped.

    A sentence with a masked word cannot be repaired reliably ("There are no XXXX of a
    pleural effusion"), so it is removed rather than guessed.
    """
    sentences = []
    for sentence in split_sentences(_XRAY_TOKEN.sub("x-ray", text)):
        if "XXXX" in sentence:
            continue
        sentence = sentence[0].upper() + sentence[1:]
        if sentence[-1] not in ".!?":
            sentence += "."
        sentences.append(sentence)
    return " ".join(sentences)


def join_report(findings: str, impression: str) -> str:
    """Cleaned findings then impression, without repeating a sentence the findings already hold."""
    first = clean_report_text(findings)
    seen = {s.lower() for s in split_sentences(first)}
    rest = [s for s in split_sentences(clean_report_text(impression)) if s.lower() not in seen]
    return " ".join([first] + rest).strip()
