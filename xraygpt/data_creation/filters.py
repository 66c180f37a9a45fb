"""Length filters on the source text; each dropped item gets a reason."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from xraygpt.data_creation.records import Rejection, SourceItem
from xraygpt.data_creation.text import clean_report_text


@dataclass
class TextFilter:
    """Minimum lengths in characters, measured after clean-up (``XXXX`` sentences removed)."""

    min_findings_chars: int = 0
    min_impression_chars: int = 0
    min_caption_chars: int = 0

    def reason_to_drop(self, item: SourceItem) -> str:
        """Empty string when the item passes."""
        limits = (
            ("findings", self.min_findings_chars),
            ("impression", self.min_impression_chars),
            ("caption", self.min_caption_chars),
        )
        for name, limit in limits:
            if limit <= 0 or name not in item.text:
                continue
            length = len(clean_report_text(item.text[name]))
            if length < limit:
                return f"{name} has {length} characters after clean-up (minimum {limit})"
        return ""


def apply_filter(items: List[SourceItem], text_filter: TextFilter) -> Tuple[List[SourceItem], List[Rejection]]:
    kept, dropped = [], []
    for item in items:
        reason = text_filter.reason_to_drop(item)
        if reason:
            dropped.append(Rejection(item.source_id, "filter", reason))
        else:
            kept.append(item)
    return kept, dropped
