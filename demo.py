"""Thin launcher kept at the repo root for users of the original layout."""
from xraygpt.common.cli import run_cli
from xraygpt.demo import main

if __name__ == "__main__":
    run_cli(main)
