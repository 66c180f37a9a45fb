"""One answer's text as its tokens arrive: where it stops and what may be streamed yet.

Streamed pieces must add up to exactly the final answer, so text that could still
change is held back: a tail that may be the start of a stop string, trailing
whitespace (the final answer is stripped) and the text of trailing byte-fallback
tokens (``<0xE2>``...: the next byte can turn what they show into another character).
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def cut_at_stop(text: str, stops: Sequence[str]) -> Tuple[str, bool]:
    """``text`` before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may still turn into a stop string or be stripped."""
    held = 0
    for stop in stops:
        for size in range(min(len(text), len(stop) - 1), 0, -1):
            if stop.startswith(text[-size:]):
                held = max(held, size)
                break
    rest = text[: len(text) - held]
    return held + (len(rest) - len(rest.rstrip()))


class AnswerText:
    """Accumulates token ids of one answer and hands out the new streamable text."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: List[int] = []
        self.sent = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Record ``token``; returns the text that is now safe to stream (may be empty)."""
        self.ids.append(token)
        text, self.stopped = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)
        if self.stopped:
            return self._advance(text.strip())
        settled = len(self.ids)
        while settled and _BYTE_TOKEN.match(self.tokenizer.convert_ids_to_tokens(self.ids[settled - 1]) or ""):
            settled -= 1
        if settled < len(self.ids):
            text, _ = cut_at_stop(self.tokenizer.decode(self.ids[:settled], skip_special_tokens=True), self.stops)
        text = text.lstrip()
        return self._advance(text[: len(text) - _held_back(text, self.stops)])

    def final(self) -> str:
        """The whole answer (stripped, cut at the first stop string)."""
        text, _ = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)
        return text.strip()

    def flush(self) -> str:
        """What is left to stream once the answer is complete."""
        return self._advance(self.final())

    def _advance(self, visible: str) -> str:
        if not visible.startswith(self.sent) or len(visible) <= len(self.sent):
            return ""
        piece, self.sent = visible[len(self.sent):], visible
        return piece
