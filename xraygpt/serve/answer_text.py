"""One answer's text as its tokens arrive: where it stops and what may be streamed yet.

Streamed pieces must add up to exactly the final answer, so text that could still
change is held back: a tail that may be the start of a stop string, trailing
whitespace (the final answer is stripped) and an unfinished multi-byte character
(byte-fallback tokens ``<0xE2>``...: the next byte completes it).
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
    """Accumulates token ids of one answer and hands out the new streamable text.

    Decoding is incremental (a few tokens per call, not the whole answer: at 32 rows and 300 tokens the full
    re-decode cost more host time than the GPU's decode step). The text of ``ids[start:]`` is compared with
    that of ``ids[start:read]``, both decoded from the same token, so a tokenizer's leading-space rule treats
    both alike; nothing settles while the answer ends in a byte-fallback token.
    """

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: List[int] = []
        self.sent = ""
        self.stopped = False
        self.text = ""  # decoded text of ids[:self._read]
        self._start = self._read = 0
        self._read_text = ""  # decoded text of ids[self._start:self._read]

    def add(self, token: int) -> str:
        """Record ``token``; returns the text that is now safe to stream (may be empty)."""
        self.ids.append(token)
        if _BYTE_TOKEN.match(self.tokenizer.convert_ids_to_tokens(token) or ""):
            return ""  # the next byte may complete (or invalidate) the character
        tail = self.tokenizer.decode(self.ids[self._start:], skip_special_tokens=True)
        if len(tail) > len(self._read_text) and tail.startswith(self._read_text):
            self.text += tail[len(self._read_text):]
            self._start, self._read = self._read, len(self.ids)
            self._read_text = self.tokenizer.decode(self.ids[self._start:], skip_special_tokens=True)
        text, self.stopped = cut_at_stop(self.text, self.stops)
        if self.stopped:
            return self._advance(text.strip())
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
