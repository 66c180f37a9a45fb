"""``response_format``: where structured (JSON) reports plug into the API.

Structured reports belong to the structured-report issue; until that lands, a request
for a JSON schema or JSON object gets a clear 400 here, the one place to wire it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from xraygpt.serve.errors import bad_request


def check_response_format(response_format: Optional[Mapping[str, Any]]) -> None:
    """Accept plain text; refuse JSON formats until structured reports exist."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return
    if kind in ("json_schema", "json_object"):
        raise bad_request("structured reports are not available yet: response_format "
                          f"{kind!r} needs the structured-report feature; ask for plain text", param="response_format",
                          code="structured_reports_unavailable")
    raise bad_request(f"unknown response_format type {kind!r}; use 'text'", param="response_format")
