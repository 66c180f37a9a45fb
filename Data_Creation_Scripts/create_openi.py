"""Launcher: see `python Data_Creation_Scripts/create_openi.py --help` and docs/data_creation.md."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xraygpt.common.cli import run_cli  # noqa: E402
from xraygpt.data_creation.cli import openi_main  # noqa: E402

if __name__ == "__main__":
    run_cli(openi_main)
