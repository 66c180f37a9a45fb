"""Structured chest X-ray reports: a versioned JSON Schema, extraction from prose, constrained decoding."""
from xraygpt.structured.extract import extract_findings, extract_report, sentences
from xraygpt.structured.metadata import checkpoint_sha256, generator_info
from xraygpt.structured.schema import (
    SCHEMA_VERSION,
    StructuredReportError,
    content_schema,
    report_schema,
    schema_errors,
    validate_report,
)

__all__ = [
    "SCHEMA_VERSION",
    "StructuredReportError",
    "checkpoint_sha256",
    "content_schema",
    "extract_findings",
    "extract_report",
    "generator_info",
    "report_schema",
    "schema_errors",
    "sentences",
    "validate_report",
]
