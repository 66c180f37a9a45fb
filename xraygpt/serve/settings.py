"""What one server instance allows: names, limits and the batching window."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class ServeSettings:
    model_name: str = "xraygpt"
    """The id clients put in ``model``; any other name gets a 404."""
    template: str = "default"
    """Registered conversation template the messages are written onto."""
    api_key: Optional[str] = None
    """When set, every /v1 request needs ``Authorization: Bearer <key>``."""
    allow_local_root: Optional[Path] = None
    """Image URLs that are plain paths (or file://) are read only from under this folder."""
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_tokens_limit: int = 1024
    default_max_tokens: int = 300

    def __post_init__(self) -> None:
        from xraygpt.common.errors import ConfigurationError

        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_image_pixels", "max_tokens_limit",
                     "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigurationError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigurationError(f"--default-max-tokens {self.default_max_tokens} is above --max-tokens-limit "
                                     f"{self.max_tokens_limit}")
