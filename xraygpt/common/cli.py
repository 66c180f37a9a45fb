"""Shared command-line plumbing for the entry points."""
from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn


class NotImplementedYet(SystemExit):
    """Exit code 3 with a clear message: the feature's issue has not landed."""


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def not_implemented(what: str) -> NoReturn:
    print(f"error: {what} is not implemented yet", file=sys.stderr)
    raise SystemExit(3)


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main``; expected user errors print one line instead of a traceback."""
    from xraygpt.common.config import ConfigError
    from xraygpt.common.registry import RegistryError

    try:
        code = main()
    except (ConfigError, RegistryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(code or 0)
