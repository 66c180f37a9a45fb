"""Caption clean-up that keeps report wording intact.

The ancestors' ``blip_caption`` lower-cased, stripped punctuation and cut
captions to 50 words, which is right for web alt-text but destroys a
radiology report ("2.5 cm", "No pneumothorax."), so by default we only
repair whitespace and spacing around punctuation.
"""
from __future__ import annotations

import re

from xraygpt.common.registry import registry

_SPACE_RUN = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:?!])")
_REPEATED_PUNCT = re.compile(r"([,;:?!])\1+|(?<!\.)\.\.(?!\.)")
# "apex.There" -> "apex. There"; digits ("2.5") and abbreviations in lower case are untouched.
_MISSING_SPACE = re.compile(r"(?<=[a-z\)])([.;?!])(?=[A-Z])")


@registry.register_processor("blip_caption")
class BlipCaptionProcessor:
    """Whitespace/punctuation clean-up; optional prompt prefix, lower-casing and word limit."""

    def __init__(self, prompt: str = "", max_words: int | None = None, lowercase: bool = False):
        if max_words is not None and int(max_words) < 1:
            raise ValueError(f"max_words must be positive or null, got {max_words}")
        self.prompt = prompt
        self.max_words = None if max_words is None else int(max_words)
        self.lowercase = lowercase

    def __call__(self, text: str) -> str:
        return self.prompt + self.clean(text)

    def clean(self, text: str) -> str:
        text = _SPACE_RUN.sub(" ", str(text)).strip()
        text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
        text = _REPEATED_PUNCT.sub(lambda m: m.group(1) or ".", text)
        text = _MISSING_SPACE.sub(r"\1 ", text)
        if self.lowercase:
            text = text.lower()
        if self.max_words is not None:
            text = " ".join(text.split(" ")[: self.max_words])
        return text

    def __repr__(self) -> str:
        return f"BlipCaptionProcessor(prompt={self.prompt!r}, max_words={self.max_words}, lowercase={self.lowercase})"
