"""Hostile and careless inputs (issue 17): no command destroys a user's file, bad samples never crash a run,
reruns and resumes are safe, dataset paths stay inside their dataset.

Also keeps the cases that already held as regression tests (crafted pickles, a kill during a save, demo
path traversal); each group names the existing test that covers it where one does.
"""
import json
import shutil

import pytest
from PIL import Image

from tests.test_infer_generate import _records, cached_loader, cli, image_dir  # noqa: F401  (fixtures)
from xraygpt.common.config import ConfigError
from xraygpt.common.errors import XrayGPTError


# ------------------------------------------------- 1. batch CLI --out that is not its output
@pytest.mark.parametrize("content", [
    b"a,b\n1,important",  # a CSV whose last row has no newline
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\n\x00\x00\xff\xd9",  # a JPEG
    b"notes without any newline",
    b'{"image": "x.png", "report": "r"}\n{"some": "other json"}\n{"image": "y',
])
def test_generate_refuses_an_out_file_that_is_not_its_own_and_leaves_it_untouched(cli, image_dir, tmp_path, content):
    out = tmp_path / "precious.csv"
    out.write_bytes(content)
    with pytest.raises(ConfigError, match="precious.csv.*(not an output|not a report|not a record)"):
        cli("--images", image_dir / "xray_0.png", "--out", out)
    assert out.read_bytes() == content


def test_generate_still_repairs_a_torn_line_of_its_own_output(cli, image_dir, tmp_path):
    out = tmp_path / "reports.jsonl"
    assert cli("--images", image_dir / "xray_0.png", "--out", out) == 0
    good = out.read_bytes()
    out.write_bytes(good + b'{"image": "half-wri')
    assert cli("--images", image_dir / "xray_0.png", image_dir / "xray_1.png", "--out", out) == 0
    assert out.read_bytes().startswith(good)
    assert [r["image_id"] for r in _records(out)] == ["xray_0", "xray_1"]


# ------------------------------------------------- 6. concurrent writers, errors recorded once
def test_a_second_generate_run_on_the_same_out_is_refused_while_the_first_holds_it(cli, image_dir, tmp_path):
    from xraygpt.generate import OutputFile

    out = tmp_path / "reports.jsonl"
    first = OutputFile(out)  # what a running first process holds
    try:
        with pytest.raises(ConfigError, match="another xraygpt.generate run is writing"):
            cli("--images", image_dir, "--out", out)
    finally:
        first.close()
    assert not out.exists()  # the lock holder wrote nothing and cleaned up its empty file
    assert cli("--images", image_dir, "--out", out) == 0
    assert len(_records(out)) == 3


def test_two_generate_processes_never_do_an_image_twice(image_dir, tmp_path, repo_root, seed_reference_dir):
    import os
    import subprocess
    import sys

    out = tmp_path / "reports.jsonl"
    cmd = [sys.executable, "-m", "xraygpt.generate", "--cfg-path", str(repo_root / "eval_configs" /
           "seed_reference_tiny.yaml"), "--device", "cpu", "--images", str(image_dir), "--out", str(out),
           "--max-new-tokens", "4", "--batch-size", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=repo_root, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    images = [r["image"] for r in _records(out)]
    assert sorted(images) == sorted(str(p) for p in image_dir.glob("*.png"))  # each exactly once
    refused = [err for code, err in results if code == 2]
    assert all("another xraygpt.generate run is writing" in err for err in refused)
    assert all(code in (0, 2) for code, _ in results), results


def test_an_unreadable_image_is_recorded_once_across_reruns(cli, image_dir, tmp_path):
    (image_dir / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "reports.jsonl"
    for _ in range(3):
        assert cli("--images", image_dir, "--out", out) == 1  # retried (and reported) every time
    assert [r["image_id"] for r in _records(out) if "error" in r] == ["broken"]
    assert len(_records(out)) == 4


# ------------------------------------------------- 8. evaluation uses the eval processor for every split
def test_evaluation_builds_every_split_with_the_eval_processor(tmp_path):
    from omegaconf import OmegaConf

    from xraygpt.common.config import Config
    from xraygpt.evaluate import build_splits

    data = tmp_path / "d"
    (data / "image").mkdir(parents=True)
    Image.new("L", (64, 64)).save(data / "image" / "a.png")
    entries = [{"image": "image/a.png", "prompt": "describe", "caption": "lungs clear"}]
    for name in ("filter_cap.json", "filter_cap_test.json"):
        (data / name).write_text(json.dumps(entries))
    cfg = {"model": {"arch": "mini_gpt4"}, "run": {"task": "image_text_pretrain", "device": "cpu"},
           "datasets": {"medvqa": {"build_info": {"storage": str(data)},  # train processor: 224 px default
                                   "vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 96}}}}}
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / "eval.yaml")
    found = build_splits(Config({"cfg_path": str(tmp_path / "eval.yaml"), "options": []}), ["train", "test"])
    assert [(split, tuple(ds[0]["image"].shape)) for _, split, ds in found] == [("train", (3, 96, 96)),
                                                                               ("test", (3, 96, 96))]


# ------------------------------------------------- 9. exposure needs a login or an explicit opt-out
@pytest.mark.parametrize("flags", [["--host", "0.0.0.0"], ["--share"], ["--host", "10.1.2.3", "--share"],
                                   ["--host", "myhost.example"]])
def test_demo_refuses_to_serve_beyond_localhost_without_auth(monkeypatch, tmp_path, flags):
    from xraygpt import demo

    monkeypatch.delenv("XRAYGPT_DEMO_AUTH", raising=False)
    with pytest.raises(ConfigError, match="without a login: add --auth user:password .* --no-auth-i-understand"):
        demo.main(["--cfg-path", str(tmp_path / "not-loaded.yaml"), *flags])  # refused before any model load
    parse = demo.build_parser().parse_args
    assert demo.launch_options(parse(["--cfg-path", "x", *flags, "--auth", "a:b"]))["auth"] == ("a", "b")
    opted_out = demo.launch_options(parse(["--cfg-path", "x", *flags, "--no-auth-i-understand"]))
    assert opted_out["auth"] is None and opted_out["server_name"] == (flags[1] if flags[0] == "--host" else "127.0.0.1")
    monkeypatch.setenv("XRAYGPT_DEMO_AUTH", "env:secret")  # read when the parser is built
    assert demo.launch_options(demo.build_parser().parse_args(["--cfg-path", "x", *flags]))["auth"] == ("env", "secret")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_demo_on_loopback_needs_no_auth(monkeypatch, host):
    from xraygpt import demo

    monkeypatch.delenv("XRAYGPT_DEMO_AUTH", raising=False)
    options = demo.launch_options(demo.build_parser().parse_args(["--cfg-path", "x", "--host", host]))
    assert options["auth"] is None and options["share"] is False
