"""``python train.py --cfg-path X.yaml [--options k=v ...]``: fine-tune a model."""
from __future__ import annotations

import argparse

from xraygpt.common.cli import not_implemented, run_cli, setup_logging
from xraygpt.common.config import Config, add_config_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train an xraygpt model from a YAML config.")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = Config(args)
    cfg.pretty_print()
    not_implemented("training (issue: runner and task)")


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
