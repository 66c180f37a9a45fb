"""One error family for everything a user can get wrong.

Every entry point catches :class:`XrayGPTError` in one wrapper
(:func:`xraygpt.common.cli.run_cli`) and prints ``error: <message>`` plus the
fix on one line, with exit code 2.  Anything else is a bug and keeps its
traceback.  Subclass the family member that says *what* went wrong; the
message says *where* (key, file, sample) and *how to fix it*.
"""
from __future__ import annotations

from typing import Optional


class XrayGPTError(Exception):
    """A user-facing problem: bad config, bad data, a missing checkpoint, an unusable device."""

    def __init__(self, message: str, *, fix: Optional[str] = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        message = str(self.args[0]) if self.args else ""
        return f"{message} ({self.fix})" if self.fix else message

    def one_line(self) -> str:
        """The message on one line (config and data messages may quote multi-line YAML)."""
        return " ".join(str(self).split())


class ConfigurationError(XrayGPTError, ValueError):
    """A config key, value, file or command-line flag that cannot be used."""


class DataError(XrayGPTError, ValueError):
    """An annotation file, image or dataset folder that cannot be read as given."""


class CheckpointLoadError(XrayGPTError, RuntimeError):
    """A weight or training-checkpoint file that is missing, unreadable or does not fit."""


class DeviceError(XrayGPTError, RuntimeError):
    """The requested device or precision is not available on this machine."""
