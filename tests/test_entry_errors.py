"""Every entry point, on each kind of bad input, prints exactly one ``error:`` line and exits 2; no traceback.

Each case is a real subprocess (the way a user meets these errors).  Starting Python and importing
torch costs seconds, so the selected cases run a few at a time in one module fixture and each test
only checks its own result.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import REPO_ROOT

TRAIN_CFG = "train_configs/phantom_tiny.yaml"
EVAL_CFG = "eval_configs/xraygpt_eval.yaml"  # names weights/ files that a fresh checkout does not have
README_TYPO = "datasets.phantoms.build_info.storag=/x"
NO_DATA = "datasets.phantoms.build_info.storage={tmp}/no_such_folder"
NOWHERE = "{tmp}/nowhere"

# case id -> (command after the interpreter, a piece the error line must contain)
CASES: Dict[str, tuple] = {
    # config typo: the README's own example
    "train-typo": (["train.py", "--cfg-path", TRAIN_CFG, "--options", README_TYPO], "did you mean 'storage'"),
    "evaluate-typo": (["test.py", "--cfg-path", TRAIN_CFG, "--options", README_TYPO], "did you mean 'storage'"),
    "demo-typo": (["demo.py", "--cfg-path", TRAIN_CFG, "--options", README_TYPO], "did you mean 'storage'"),
    "generate-typo": (["-m", "xraygpt.generate", "--cfg-path", TRAIN_CFG, "--options", README_TYPO,
                       "--images", "{image}", "--out", "{tmp}/g-typo.jsonl"], "did you mean 'storage'"),
    "quickstart-typo": (["-m", "xraygpt.quickstart", "--options", README_TYPO], "did you mean 'storage'"),
    "encoder-pretraining-typo": (["-m", "xraygpt.tasks.encoder_pretraining", "--cfg-path", TRAIN_CFG,
                                  "--options", README_TYPO], "did you mean 'storage'"),
    "train-run-typo": (["train.py", "--cfg-path", TRAIN_CFG, "--options", "run.init_Lr=1e-4"], "did you mean 'init_lr'"),
    "serve-typo": (["-m", "xraygpt.serve", "--cfg-path", TRAIN_CFG, "--options", README_TYPO], "did you mean 'storage'"),
    "export-typo": (["-m", "xraygpt.export", "--cfg-path", TRAIN_CFG, "--options", README_TYPO, "--to", "hf-blip2",
                     "{tmp}/exported"], "did you mean 'storage'"),
    "export-no-weights": (["-m", "xraygpt.export", "--cfg-path", EVAL_CFG, "--to", "hf-blip2", "{tmp}/exported"],
                          "weights/eva_vit_g.pth"),
    # weight files that are not there
    "train-no-weights": (["train.py", "--cfg-path", TRAIN_CFG, "--options", "datasets.phantoms.build_info.storage={phantoms}",
                          "model.vit_path={tmp}/missing_vit.pth"], "missing_vit.pth"),
    "evaluate-no-weights": (["test.py", "--cfg-path", TRAIN_CFG, "--options", "datasets.phantoms.build_info.storage={phantoms}",
                             "model.vit_path={tmp}/missing_vit.pth", "run.test_splits=[val]"], "missing_vit.pth"),
    "demo-no-weights": (["demo.py", "--cfg-path", EVAL_CFG], "weights/eva_vit_g.pth"),
    "generate-no-weights": (["-m", "xraygpt.generate", "--cfg-path", EVAL_CFG, "--images", "{image}",
                             "--out", "{tmp}/g-weights.jsonl"], "weights/eva_vit_g.pth"),
    # data paths that are not there
    "train-no-data": (["train.py", "--cfg-path", TRAIN_CFG, "--options", NO_DATA], "no_such_folder"),
    "evaluate-no-data": (["test.py", "--cfg-path", TRAIN_CFG, "--options", NO_DATA], "no_such_folder"),
    "generate-no-images": (["-m", "xraygpt.generate", "--cfg-path", EVAL_CFG, "--images", NOWHERE,
                            "--out", "{tmp}/g-images.jsonl"], "nowhere"),
    "encoder-pretraining-no-data": (["-m", "xraygpt.tasks.encoder_pretraining", "--cfg-path", TRAIN_CFG,
                                     "--options", NO_DATA], "no_such_folder"),
    "validate-no-data": (["-m", "xraygpt.datasets.validate", NOWHERE], "nowhere"),
    "create-openi-no-data": (["Data_Creation_Scripts/create_openi.py", "--root", NOWHERE, "--out", "{tmp}/o",
                              "--offline"], "nowhere"),
    "create-roco-no-data": (["Data_Creation_Scripts/create_roco.py", "--roco-dir", NOWHERE, "--out", "{tmp}/r",
                             "--offline"], "nowhere"),
    "merge-no-data": (["Data_Creation_Scripts/merge_datasets.py", NOWHERE, "--out", "{tmp}/m"], "nowhere"),
    "tokenizer-no-data": (["-m", "xraygpt.tasks.tokenizer_training", f"{NOWHERE}.json", "--out", "{tmp}/t.model"],
                          "nowhere"),
    "phantoms-bad-value": (["-m", "xraygpt.datasets.phantoms", "--out", "{tmp}/p", "--prevalence", "fracture=2"],
                           "fracture"),
    # devices this machine cannot give
    "train-bad-device": (["train.py", "--cfg-path", TRAIN_CFG, "--options", "run.device=tpu"], "'tpu'"),
    "evaluate-bad-device": (["test.py", "--cfg-path", TRAIN_CFG, "--device", "tpu"], "'tpu'"),
    "demo-bad-device": (["demo.py", "--cfg-path", EVAL_CFG, "--device", "tpu"], "'tpu'"),
    "generate-bad-device": (["-m", "xraygpt.generate", "--cfg-path", EVAL_CFG, "--images", "{image}",
                             "--out", "{tmp}/g-device.jsonl", "--device", "tpu"], "'tpu'"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Dict[str, str]:
    from PIL import Image

    from xraygpt.datasets import phantoms

    tmp = tmp_path_factory.mktemp("entry_errors")
    image = tmp / "chest.png"
    Image.new("L", (32, 32), 128).save(image)
    assert phantoms.main(["--out", str(tmp / "phantoms"), "--n", "6", "--seed", "0", "--size", "32"]) == 0
    return {"tmp": str(tmp), "image": str(image), "phantoms": str(tmp / "phantoms")}


def _run(argv: List[str], where: Dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("XRAYGPT_DEBUG", None)
    command = [sys.executable, *(arg.format(**where) for arg in argv)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results(request, inputs) -> Dict[str, subprocess.CompletedProcess]:
    """Run the cases selected in this session, three at a time."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params]
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(selected, pool.map(lambda case: _run(CASES[case][0], inputs), selected)))
    return done


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_error_line_and_exit_2(case, results):
    out = results[case]
    text = out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text, text
    assert out.returncode == 2, text
    assert len(errors) == 1, text
    assert CASES[case][1] in errors[0], errors[0]


def test_debug_flag_shows_the_traceback(inputs):
    out = _run(["train.py", "--cfg-path", TRAIN_CFG, "--options", README_TYPO, "--debug"], inputs)
    assert out.returncode == 1 and "Traceback" in out.stderr and "did you mean 'storage'" in out.stderr


def test_every_parser_takes_debug():
    from xraygpt import demo, evaluate, generate, train
    from xraygpt.data_creation import cli as data_cli

    parsers = [m.build_parser() for m in (train, demo, evaluate, generate)]
    parsers += [data_cli.openi_parser(), data_cli.roco_parser(), data_cli.merge_parser()]
    for parser in parsers:
        assert any("--debug" in action.option_strings for action in parser._actions), parser.prog


def test_install_metadata_has_an_spdx_license():
    import tomllib

    project = tomllib.loads(Path(REPO_ROOT, "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause"  # a table makes setuptools print a deprecation banner
