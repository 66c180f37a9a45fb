"""The versioned JSON Schema of a structured chest X-ray report, and validation against it.

The schema ships in the package (``schemas/chest_xray_report.v<N>.json``) so every consumer (the CLI,
the demo, the evaluator, the serve API) checks the same contract.  Validation uses ``jsonschema``
(pinned): a hand-written validator would have to re-implement ``$ref``, ``enum`` with ``null``,
``const`` and ``pattern`` correctly, which is exactly what that library is tested for.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, List, Mapping

from xraygpt.common.errors import DataError

SCHEMA_VERSION = "1"
SCHEMA_FILE = f"chest_xray_report.v{SCHEMA_VERSION}.json"
STATUSES = ("present", "absent", "uncertain")
LATERALITIES = ("left", "right", "bilateral", None)


class StructuredReportError(DataError):
    """A structured report that does not fit the schema."""


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("xraygpt.structured").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8")


def report_schema() -> Dict[str, Any]:
    """The full report schema (a fresh copy, safe to modify)."""
    return json.loads(_schema_text())


def content_schema() -> Dict[str, Any]:
    """What a model writes under constrained decoding: the report without ``schema_version`` and ``generator``.

    Those two are added by the program (it knows the version, the checkpoint and the settings), so a
    model is never asked to invent them.
    """
    schema = copy.deepcopy(report_schema())
    for key in ("schema_version", "generator"):
        schema["properties"].pop(key)
        schema["required"].remove(key)
    schema["$defs"].pop("generator")
    schema.pop("$id")
    schema["title"] = f"Structured chest X-ray report content, version {SCHEMA_VERSION}"
    return schema


@lru_cache(maxsize=2)
def _validator(kind: str):
    import jsonschema

    schema = report_schema() if kind == "report" else content_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(document: Any, *, content_only: bool = False) -> List[str]:
    """Every schema violation of ``document`` as ``<json path>: <message>``; empty when valid."""
    validator = _validator("content" if content_only else "report")
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}" for e in errors]


def validate_report(document: Any, *, content_only: bool = False, where: str = "structured report") -> Mapping[str, Any]:
    """Return ``document`` when it fits the schema; otherwise raise one line naming the first problems."""
    errors = schema_errors(document, content_only=content_only)
    if errors:
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        raise StructuredReportError(f"{where} does not fit schema v{SCHEMA_VERSION}: {shown}")
    return document
