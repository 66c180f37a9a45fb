"""``python test.py --cfg-path eval_configs/X.yaml``: generate and score reports."""
from __future__ import annotations

import argparse

from xraygpt.common.cli import not_implemented, run_cli, setup_logging
from xraygpt.common.config import Config, add_config_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate reports for a test split and score them.")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    Config(args)
    not_implemented("evaluation (issue: inference and evaluation)")


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
