"""``python demo.py --cfg-path eval_configs/X.yaml``: Gradio chat on 127.0.0.1."""
from __future__ import annotations

import argparse

from xraygpt.common.cli import not_implemented, run_cli, setup_logging
from xraygpt.common.config import Config, add_config_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with an xraygpt model about an uploaded image.")
    add_config_arguments(parser)
    parser.add_argument("--gpu-id", type=int, default=0, help="CUDA device index to run on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    Config(args)
    not_implemented("the demo (issue: inference and demo)")


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
