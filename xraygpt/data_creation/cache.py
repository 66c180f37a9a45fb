"""Append-only JSONL cache of finished jobs: the run's durable state.

Each accepted job is one line, written with flush + fsync before the next job is
counted, so a kill loses at most the requests still in flight.  A line cut short by a
kill is dropped (with a warning) and the file is truncated back to the last complete
line before new lines are appended.  An exclusive lock stops two runs sharing a cache.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict

from xraygpt.common.fileio import try_lock_exclusive
from xraygpt.data_creation.records import DataCreationError

log = logging.getLogger(__name__)


class JsonlCache:
    """``key -> record`` loaded from ``path``; :meth:`append` makes a record durable."""

    def __init__(self, path: Path):
        self.path = path
        self.records: Dict[str, Dict[str, Any]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a+b")
        self._lock()
        self._load()

    def _lock(self) -> None:
        if not try_lock_exclusive(self._handle):  # Windows: no advisory lock, documented limitation
            self._handle.close()
            raise DataCreationError(f"another run is writing {self.path}; wait for it or use another --out folder")

    def _load(self) -> None:
        self._handle.seek(0)
        data = self._handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run", self.path, len(data) - len(complete))
            self._handle.truncate(len(complete))
        for line_no, line in enumerate(complete.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.records[record["key"]] = record
            except (ValueError, KeyError, TypeError) as exc:
                raise DataCreationError(
                    f"{self.path}, line {line_no}: not a cache record ({exc}); remove that line or the file to regenerate"
                ) from exc

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def append(self, record: Dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._handle.seek(0, os.SEEK_END)
        self._handle.write(line.encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records[record["key"]] = record

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
