"""``response_format``: structured (JSON) reports from the API.

``{"type": "json_schema"}`` (or ``"json_object"``) returns the answer as the project's structured chest
X-ray report (:mod:`xraygpt.structured`, schema v1), read from the generated prose in extract mode, so
the content always validates against that schema.  A client may send that schema or none; any other
schema is refused, as is streaming (the report exists only once the prose is complete).
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from xraygpt.serve.errors import bad_request

JSON_FORMATS = ("json_schema", "json_object")


def wants_structured(response_format: Optional[Mapping[str, Any]]) -> bool:
    return (response_format or {}).get("type", "text") in JSON_FORMATS


def check_response_format(response_format: Optional[Mapping[str, Any]], stream: bool = False) -> None:
    """Accept plain text, or a JSON format this server can honour; refuse the rest with a 400."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return
    if kind not in JSON_FORMATS:
        raise bad_request(f"unknown response_format type {kind!r}; use 'text', 'json_schema' or 'json_object'",
                          param="response_format")
    if stream:
        raise bad_request(f"response_format {kind!r} cannot be streamed (the report is built from the whole answer); "
                          "set stream to false", param="response_format")
    from xraygpt.structured import report_schema

    given = ((response_format or {}).get("json_schema") or {}).get("schema") if kind == "json_schema" else None
    if given not in (None, {}) and given != report_schema():
        raise bad_request("this server writes one JSON schema, the xraygpt chest X-ray report v1 "
                          "(xraygpt.structured.report_schema()); omit json_schema.schema or send that schema",
                          param="response_format", code="unsupported_schema")


def structured_answer(text: str, model: Any, model_name: str, settings: Mapping[str, Any]) -> str:
    """The answer text as a schema-valid structured report (extract mode), serialised."""
    from xraygpt.structured.reports import model_generator, structured_from_text

    report = structured_from_text(text, model_generator(model, "extract", model_name, settings))
    return json.dumps(report, ensure_ascii=False)
