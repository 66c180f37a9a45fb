"""One call for callers (batch CLI, demo, evaluation): prose and structured report per sample, in either mode."""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from xraygpt.structured.constrained import complete_report, content_json, decode_constrained
from xraygpt.structured.extract import extract_report
from xraygpt.structured.metadata import generator_info
from xraygpt.structured.schema import schema_errors, validate_report

MODES = ("extract", "constrained")


def model_generator(model: Any, mode: str, name: str, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``generator`` block for ``model``: its name, the SHA-256 of its ``model.ckpt`` and the settings."""
    return generator_info(mode, name, getattr(getattr(model, "config", None), "ckpt", None), settings)


def structured_from_text(text: str, generator: Mapping[str, Any]) -> Dict[str, Any]:
    """Extract mode on text already generated (the demo's answer, an evaluation record)."""
    return dict(validate_report(extract_report(text, generator)))


def structured_of_prediction(text: str, generator: Mapping[str, Any]) -> Dict[str, Any]:
    """A prediction that is already a content document (a JSON-target model's output) is used as it is;
    any other text goes through extract mode."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            content = json.loads(stripped)
        except json.JSONDecodeError:
            content = None
        if isinstance(content, dict) and not schema_errors(content, content_only=True):
            return complete_report(content, {**generator, "mode": "constrained"})
    return structured_from_text(text, generator)


def generate_structured(
    model: Any,
    images: Optional[torch.Tensor],
    prompts: Sequence[str],
    mode: str,
    generator: Mapping[str, Any],
    *,
    image_features: Optional[torch.Tensor] = None,
    return_ids: bool = False,
    **generation_kwargs: Any,
) -> Tuple:
    """``(texts, reports)``: the decoded text of each sample and its schema-valid structured report
    (plus each sample's new token ids with ``return_ids``).

    ``extract`` decodes prose as usual and reads the report from it; ``constrained`` decodes the JSON
    itself under the schema (the text is then that JSON).
    """
    if mode == "extract":
        texts, ids = model.generate(images, list(prompts), image_features=image_features, return_ids=True,
                                    **generation_kwargs)
        reports = [structured_from_text(text, generator) for text in texts]
    elif mode == "constrained":
        contents, ids = decode_constrained(model, images, prompts, image_features=image_features, return_ids=True,
                                           **generation_kwargs)
        texts, reports = [content_json(c) for c in contents], [complete_report(c, generator) for c in contents]
    else:
        raise ValueError(f"structured mode must be one of {MODES}, got {mode!r}")
    return (texts, reports, ids) if return_ids else (texts, reports)
