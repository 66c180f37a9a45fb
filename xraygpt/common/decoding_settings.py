"""Decoding settings: the config's ``generation:`` section, the batch CLI's flags and the chat's sliders."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict

from xraygpt.common.errors import ConfigurationError


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode; ``temperature == 0`` means greedy (or beam) search, the default: reports that repeat.

    As the ``generation:`` section it sets what ``generate`` and ``evaluate`` (``test.py``) decode with;
    their flags (``--max-new-tokens`` ...) override it.  The chat starts from :data:`CHAT_DEFAULTS`.
    """

    max_new_tokens: int = 300
    """Longest answer, in tokens."""
    num_beams: int = 1
    """Beam-search width (1: none)."""
    temperature: float = 0.0
    """0: greedy or beam search; above 0: sampling at this temperature."""
    top_p: float = 0.9
    """Nucleus-sampling mass (used when sampling)."""
    repetition_penalty: float = 1.0
    """Above 1 discourages repeats."""
    length_penalty: float = 1.0
    """Beam-search length exponent (used when ``num_beams > 1``)."""

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("num_beams", self.num_beams >= 1, ">= 1"),
            ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigurationError(f"generation {name} must be {allowed}, got {getattr(self, name)} "
                                         f"(flag --{name.replace('_', '-')} or config key generation.{name})")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def generate_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for transformers ``generate``."""
        kwargs: Dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


CHAT_DEFAULTS = GenerationSettings(temperature=1.0)
"""Where the chat and the demo's sliders start: sampling at temperature 1.0, top-p 0.9, 300 new tokens."""
