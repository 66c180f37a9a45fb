"""Entry points: --help explains every flag; commands also run as python -m."""
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("script", ["train.py", "demo.py", "test.py"])
def test_root_scripts_help(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--cfg-path" in out.stdout and "--options" in out.stdout


@pytest.mark.parametrize("module", ["xraygpt.train", "xraygpt.demo", "xraygpt.evaluate"])
def test_modules_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--cfg-path" in out.stdout


def test_missing_config_is_one_clear_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    out = subprocess.run(
        [sys.executable, "train.py", "--cfg-path", str(missing)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert str(missing) in out.stderr and "Traceback" not in out.stderr
