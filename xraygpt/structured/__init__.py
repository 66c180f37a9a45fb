"""Structured chest X-ray reports: a versioned JSON Schema, extraction from prose, constrained decoding."""
from xraygpt.structured.extract import extract_findings, extract_report, sentences
from xraygpt.structured.metadata import checkpoint_sha256, generator_info
from xraygpt.structured.reports import MODES, generate_structured, model_generator, structured_from_text
from xraygpt.structured.schema import (
    SCHEMA_VERSION,
    StructuredReportError,
    content_schema,
    report_schema,
    schema_errors,
    validate_report,
)

__all__ = [
    "MODES",
    "SCHEMA_VERSION",
    "StructuredReportError",
    "checkpoint_sha256",
    "content_schema",
    "extract_findings",
    "extract_report",
    "generate_structured",
    "generator_info",
    "model_generator",
    "report_schema",
    "schema_errors",
    "sentences",
    "structured_from_text",
    "validate_report",
]
