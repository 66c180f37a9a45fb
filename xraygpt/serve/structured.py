"""``response_format``: structured (JSON) reports from the API, in either mode of :mod:`xraygpt.structured`.

``{"type": "json_schema"}`` (or ``"json_object"``) returns the answer as the project's structured chest
X-ray report (schema v1), so the content always validates against that schema.  A client may send that
schema or none; any other schema is refused, as is streaming (the report exists only once it is complete).
``"mode"`` picks how it is made, as ``generate --structured`` does:

* ``extract`` (default): the prose is generated as usual and the report read from it;
* ``constrained``: the JSON itself is decoded under the schema's grammar, for a model fine-tuned on JSON
  targets.  Decoding sits in the continuous batcher, which must mask each constrained row's logits at each
  step: :class:`RowGrammar` is that per-request state, and :func:`constrained_answer` turns the decoded text
  into the report.  The server passes ``constrained=True`` to :func:`check_response_format` (its batcher
  applies the masks); a caller without it refuses the mode with a 400, never an unconstrained answer.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from xraygpt.serve.errors import bad_request

JSON_FORMATS = ("json_schema", "json_object")
MODES = ("extract", "constrained")


def wants_structured(response_format: Optional[Mapping[str, Any]]) -> bool:
    return (response_format or {}).get("type", "text") in JSON_FORMATS


def structured_mode(response_format: Optional[Mapping[str, Any]]) -> Optional[str]:
    """None for a text answer, else ``'extract'`` (the default) or ``'constrained'`` (``response_format.mode``)."""
    if not wants_structured(response_format):
        return None
    return (response_format or {}).get("mode") or "extract"


def check_response_format(response_format: Optional[Mapping[str, Any]], stream: bool = False,
                          constrained: bool = False) -> None:
    """Accept plain text, or a JSON format this server can honour; refuse the rest with a 400.

    ``constrained``: whether this server decodes under the schema's grammar (its batcher applies
    :class:`RowGrammar` masks); without it a constrained request is refused by name.
    """
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return
    if kind not in JSON_FORMATS:
        raise bad_request(f"unknown response_format type {kind!r}; use 'text', 'json_schema' or 'json_object'",
                          param="response_format")
    if stream:
        raise bad_request(f"response_format {kind!r} cannot be streamed (the report is built from the whole answer); "
                          "set stream to false", param="response_format")
    mode = structured_mode(response_format)
    if mode not in MODES:
        raise bad_request(f"unknown response_format mode {mode!r}; use 'extract' (the default) or 'constrained'",
                          param="response_format.mode")
    if mode == "constrained" and not constrained:
        raise bad_request("response_format mode 'constrained' is not available on this server (its batcher does not "
                          "decode under the schema's grammar yet); use mode 'extract', or python -m xraygpt.generate "
                          "--structured constrained", param="response_format.mode", code="constrained_unavailable")
    from xraygpt.structured import report_schema

    given = ((response_format or {}).get("json_schema") or {}).get("schema") if kind == "json_schema" else None
    if given not in (None, {}) and given != report_schema():
        raise bad_request("this server writes one JSON schema, the xraygpt chest X-ray report v1 "
                          "(xraygpt.structured.report_schema()); omit json_schema.schema or send that schema",
                          param="response_format", code="unsupported_schema")


class RowGrammar:
    """One constrained request's grammar state in a continuous batch: mask its logits row, then accept its token.

    Per decode step of the row: ``mask_(logits)`` (before temperature / top-p, so only tokens that continue a
    schema-valid document can be drawn), then ``accept(token)``.  Once the document closes only EOS is allowed,
    so the batcher's usual EOS handling ends the row; stop strings must be off for such a row ('###' may sit
    inside a JSON string).
    """

    def __init__(self, model: Any):
        import xgrammar

        from xraygpt.structured.constrained import SchemaDecoder

        compiled = SchemaDecoder.for_model(model).compiled
        self._xgr = xgrammar
        self.matcher = xgrammar.GrammarMatcher(compiled)
        self.bitmask = xgrammar.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def mask_(self, logits: Any) -> Any:
        """Disallowed tokens of this row's logits (``[V]`` or ``[1, V]``) set to -inf, in place."""
        row = logits.view(1, -1)
        self.matcher.fill_next_token_bitmask(self.bitmask, 0)
        if row.device.type == "cuda":
            self._xgr.apply_token_bitmask_inplace(row, self.bitmask.to(row.device))
        else:
            cpu = row.cpu()
            self._xgr.apply_token_bitmask_inplace(cpu, self.bitmask)
            row.copy_(cpu)
        return logits

    def accept(self, token: int) -> bool:
        """Advance past ``token`` (drawn from masked logits); True once the document and its EOS are done."""
        if not self.matcher.accept_token(int(token)):
            raise ValueError(f"token {token} does not continue the schema's grammar: mask the logits first")
        return self.matcher.is_terminated()


def structured_answer(text: str, model: Any, model_name: str, settings: Mapping[str, Any]) -> str:
    """The answer text as a schema-valid structured report (extract mode), serialised."""
    from xraygpt.structured.reports import model_generator, structured_from_text

    report = structured_from_text(text, model_generator(model, "extract", model_name, settings))
    return json.dumps(report, ensure_ascii=False)


def constrained_answer(text: str, model: Any, model_name: str, settings: Mapping[str, Any]) -> str:
    """Text decoded under :class:`RowGrammar` -> the full report (program fields added), serialised; a document
    cut by ``max_tokens`` gets a 400 that says to raise it."""
    from xraygpt.structured.constrained import complete_report, parse_content
    from xraygpt.structured.reports import model_generator
    from xraygpt.structured.schema import StructuredReportError

    try:
        content = parse_content(text, where="the constrained answer",
                                fix=f"raise max_tokens (was {settings.get('max_new_tokens')})")
    except StructuredReportError as exc:
        raise bad_request(str(exc), param="max_tokens") from None
    report = complete_report(content, model_generator(model, "constrained", model_name, settings))
    return json.dumps(report, ensure_ascii=False)
