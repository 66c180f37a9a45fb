"""Shared command-line plumbing for the entry points."""
from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn


class NotImplementedYet(SystemExit):
    """Exit code 3 with a clear message: the feature's issue has not landed."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost); a host name may be anything."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """Run ``main``; user errors (the :class:`XrayGPTError` family) print one line and exit 2.

    ``XRAYGPT_DEBUG=1`` re-raises them with their traceback.  Anything else is a bug
    and keeps its traceback.
    """
    import os

    from xraygpt.common.errors import XrayGPTError

    try:
        code = main()
    except XrayGPTError as exc:
        if os.environ.get("XRAYGPT_DEBUG") == "1":
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(2)
    except FileNotFoundError as exc:
        if os.environ.get("XRAYGPT_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    raise SystemExit(code or 0)
