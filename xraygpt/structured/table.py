"""A structured report as an HTML findings table (the demo's view): status colour-coded, evidence on hover."""
from __future__ import annotations

from html import escape
from typing import Any, Mapping

STATUS_COLOURS = {"present": "#c62828", "uncertain": "#ef6c00", "absent": "#2e7d32"}
TABLE_CSS = (
    "#findings-table table {border-collapse: collapse; width: 100%;}"
    "#findings-table th, #findings-table td {border: 1px solid #ddd; padding: 4px 8px; text-align: left;}"
    "#findings-table td.status {font-weight: 600; color: #fff;}"
    + "".join(f"#findings-table td.status-{s} {{background: {c};}}" for s, c in STATUS_COLOURS.items())
)
_COLUMNS = ("observation", "status", "laterality", "location", "severity")


def findings_table_html(report: Mapping[str, Any]) -> str:
    """One row per finding; hovering a row shows the sentence it was read from (``title``)."""
    if not report.get("findings"):
        note = "No finding (no pathology mentioned)." if report.get("no_finding") else "No CheXpert observation mentioned."
        return f'<p class="findings-empty">{escape(note)}</p>'
    head = "".join(f"<th>{escape(c.capitalize())}</th>" for c in _COLUMNS)
    rows = []
    for finding in report["findings"]:
        cells = []
        for column in _COLUMNS:
            value = finding[column]
            text = "—" if value is None else escape(str(value))
            css = f' class="status status-{escape(value)}"' if column == "status" else ""
            cells.append(f"<td{css}>{text}</td>")
        rows.append(f'<tr class="finding" title="{escape(finding["evidence"], quote=True)}">{"".join(cells)}</tr>')
    impression = report.get("impression")
    caption = f"<caption>Impression: {escape(impression)}</caption>" if impression else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
