"""*Constrained* mode: decode a structured report under the schema with a grammar-constrained logits processor.

For a model fine-tuned on JSON targets (``python -m xraygpt.data_creation ... --tasks structured``).
At every step xgrammar masks the tokens that cannot continue a document of
:func:`~xraygpt.structured.schema.content_schema`, so whatever the weights, the text decoded is a
prefix of a schema-valid document, and once the grammar closes only EOS is allowed.  Where the
unconstrained greedy output already fits the schema the mask never removes its argmax, so both
decodings are equal (tested).  A document cut by ``max_new_tokens`` raises instead of returning
broken JSON.

Why xgrammar and not outlines: xgrammar 0.2.8 ships a ``transformers.LogitsProcessor``
(``xgrammar.contrib.hf``) that works with transformers 5 ``generate(logits_processor=...)`` and with
our ``inputs_embeds`` calls, installs as one wheel plus ``apache-tvm-ffi`` on Python 3.11 next to
torch 2.14, and compiles our schema for the tiny tokenizer in under a second.  outlines 1.x would
bring five more packages (outlines-core, diskcache, genson, ...) for the same masking.

The formatting is fixed to ``json.dumps``'s (``", "`` and ``": "``, keys in schema order), the
format :func:`content_json` writes the training targets in, so the model has no freedom but the content.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from xraygpt.structured.schema import SCHEMA_VERSION, StructuredReportError, content_schema, validate_report

SEPARATORS = (", ", ": ")
_PROGRAM_FIELDS = ("schema_version", "generator")


def content_json(report: Mapping[str, Any]) -> str:
    """The model-written part of a structured report as the exact text a constrained model emits."""
    body = {key: value for key, value in report.items() if key not in _PROGRAM_FIELDS}
    return json.dumps(body, ensure_ascii=False, separators=SEPARATORS)


class SchemaDecoder:
    """Compiles the content schema once for a model's tokenizer; hands out one logits processor per call."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        import xgrammar

        self._xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiled = xgrammar.GrammarCompiler(info).compile_json_schema(
            json.dumps(content_schema()), any_whitespace=False, separators=SEPARATORS, strict_mode=True
        )

    @classmethod
    def for_model(cls, model: Any) -> "SchemaDecoder":
        cached = getattr(model, "_schema_decoder", None)
        if cached is None:
            cached = cls(model.tokenizer, model.llama_model.get_output_embeddings().weight.shape[0])
            model._schema_decoder = cached
        return cached

    def logits_processor(self) -> Any:
        """A fresh processor: xgrammar's keeps per-row matcher state, so it serves one ``generate`` call."""
        return self._xgr.contrib.hf.LogitsProcessor(self.compiled)


def decode_constrained(
    model: Any,
    images: Optional[torch.Tensor],
    prompts: Sequence[str],
    *,
    image_features: Optional[torch.Tensor] = None,
    return_ids: bool = False,
    **generation_kwargs: Any,
) -> Any:
    """The content part (findings, impression, no_finding) of each sample's report, decoded under the schema
    (and each sample's new token ids with ``return_ids``).

    Raises :class:`StructuredReportError` naming the sample when ``max_new_tokens`` ends a document early.
    """
    decoder = SchemaDecoder.for_model(model)
    kwargs = dict(generation_kwargs)
    kwargs["logits_processor"] = [*kwargs.get("logits_processor", []), decoder.logits_processor()]
    kwargs["stop_strings"] = []  # the grammar ends the document; '###' may occur inside a JSON string
    _, ids = model.generate(images, list(prompts), image_features=image_features, return_ids=True, **kwargs)
    out = []
    for index, row in enumerate(ids):
        text = model.tokenizer.decode(row, skip_special_tokens=True)
        out.append(parse_content(text, where=f"constrained output of sample {index}",
                                 limit=kwargs.get("max_new_tokens")))
    return (out, ids) if return_ids else out


def parse_content(text: str, where: str, limit: Optional[int] = None, fix: Optional[str] = None) -> Dict[str, Any]:
    """JSON text -> validated content; a truncated document gets a message that says how to fix it
    (``fix``, else raising ``--max-new-tokens``)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = fix or (f"raise --max-new-tokens (was {limit})" if limit else "raise max_new_tokens")
        raise StructuredReportError(
            f"{where} ended before the JSON closed ({len(text)} characters, {exc.msg} at {exc.pos}); {hint}"
        ) from None
    validate_report(document, content_only=True, where=where)
    return document


def complete_report(content: Mapping[str, Any], generator: Mapping[str, Any]) -> Dict[str, Any]:
    """Content from the model + the program's fields = a full report (validated)."""
    report = {"schema_version": SCHEMA_VERSION, **content, "generator": dict(generator)}
    return dict(validate_report(report))

