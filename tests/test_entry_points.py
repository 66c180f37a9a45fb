"""Entry points: --help explains every flag; commands also run as python -m."""
import importlib
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("module", ["xraygpt.train", "xraygpt.demo", "xraygpt.evaluate", "xraygpt.generate"])
def test_every_entry_point_documents_its_flags(module):
    parser = importlib.import_module(module).build_parser()
    text = parser.format_help()
    assert "--cfg-path" in text and "--options" in text
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{module}: flag {action.option_strings} has no help text"


def test_root_script_runs_as_script_and_as_module(tmp_path):
    # One subprocess each: importing the package costs seconds, so keep these few.
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--cfg-path" in out.stdout
    missing = tmp_path / "missing.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "xraygpt.train", "--cfg-path", str(missing)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert str(missing) in out.stderr and "Traceback" not in out.stderr
