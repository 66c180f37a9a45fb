"""The API's errors: an HTTP status plus OpenAI's error object (``{"error": {message, type, param, code}}``)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from xraygpt.common.errors import XrayGPTError


class APIError(XrayGPTError):
    """A request the server refuses; ``message`` is shown to the client as it is, so it holds no internals."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type, code, param
        self.headers = headers or {}

    def body(self) -> Dict[str, Any]:
        return error_body(str(self), self.type, self.code, self.param)


def error_body(message: str, type: str, code: Optional[str] = None, param: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)
