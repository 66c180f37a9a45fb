"""Shared command-line plumbing for the entry points."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, NoReturn

DEBUG_HELP = "show the full traceback of a user error (same as XRAYGPT_DEBUG=1)"


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


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--debug``: every entry point takes it; :func:`run_cli` reads it."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``XRAYGPT_DEBUG=1``: the one place both are read."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("XRAYGPT_DEBUG") == "1"


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main``; user errors (the :class:`XrayGPTError` family) print one line and exit 2.

    ``--debug`` (or ``XRAYGPT_DEBUG=1``) re-raises them with their traceback.  Anything
    else is a bug and keeps its traceback.
    """
    from xraygpt.common.errors import XrayGPTError

    try:
        code = main()
    except XrayGPTError as exc:
        if debug_requested():
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(2)
    except FileNotFoundError as exc:
        if debug_requested():
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    raise SystemExit(code or 0)
