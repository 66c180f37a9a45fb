"""Where training metrics go: console line, ``log.jsonl`` and TensorBoard (rank 0 only)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

logger = logging.getLogger("xraygpt.train")


def format_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class MetricsLog:
    """Appends one JSON object per event to ``log.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, job_dir: Optional[Path], enabled: bool = True, purge_step: Optional[int] = None):
        """``purge_step``: a resumed run's first step; TensorBoard drops the older run's events from there on."""
        self.enabled = enabled and job_dir is not None
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        job_dir = Path(job_dir)  # type: ignore[arg-type]
        job_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(job_dir / "log.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(job_dir / "tensorboard"), purge_step=purge_step)
        except ImportError:  # tensorboard is an optional extra
            logger.warning("tensorboard is not installed: metrics go to log.jsonl only (pip install tensorboard)")

    def write(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
