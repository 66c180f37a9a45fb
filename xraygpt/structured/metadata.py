"""The ``generator`` block of a structured report: which model, which weights, which settings."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from xraygpt.common.checkpointing import _sha256 as file_sha256


@lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def checkpoint_sha256(path: Optional[str | Path]) -> Optional[str]:
    """SHA-256 of a weights file (computed once per file version); None when there is no file."""
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        return None
    stat = file.stat()
    return _digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def generator_info(mode: str, model: str, checkpoint: Optional[str | Path], settings: Mapping[str, Any]) -> Dict[str, Any]:
    return {"mode": mode, "model": model, "checkpoint_sha256": checkpoint_sha256(checkpoint), "settings": dict(settings)}
