"""Hostile and careless inputs (issue 17): no command destroys a user's file, bad samples never crash a run,
reruns and resumes are safe, dataset paths stay inside their dataset.

Also keeps the cases that already held as regression tests (crafted pickles, a kill during a save, demo
path traversal); each group names the existing test that covers it where one does.
"""
import json
import shutil

import pytest
from PIL import Image

from tests import train_support  # noqa: F401  (registers the stand-in model at collection, before any test)
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


# ------------------------------------------------- 3. run.on_bad_sample: skip on every data path
def _decompression_bomb(path):
    """A tiny PNG whose header claims 30000 x 30000 pixels (Pillow refuses it as a decompression bomb)."""
    import struct
    import zlib

    Image.new("L", (16, 16)).save(path)
    data = bytearray(path.read_bytes())
    start = 8 + 4  # signature, IHDR length
    data[start + 4:start + 12] = struct.pack(">II", 30000, 30000)
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 17])))
    path.write_bytes(bytes(data))


BAD_KINDS = {3: "junk bytes", 5: "1x1 png", 7: "decompression bomb", 9: "dangling symlink", 10: "symlink out"}


def _hostile_dataset(folder, n=12):
    """``n`` entries; those in BAD_KINDS cannot be used (10 points outside the dataset, at /etc/passwd)."""
    (folder / "img").mkdir(parents=True)
    entries = []
    for i in range(n):
        path = folder / "img" / f"x{i}.png"
        kind = BAD_KINDS.get(i)
        if kind == "junk bytes":
            path.write_bytes(b"not a png at all")
        elif kind == "1x1 png":
            Image.new("L", (1, 1)).save(path)
        elif kind == "decompression bomb":
            _decompression_bomb(path)
        elif kind == "dangling symlink":
            path.symlink_to(folder / "img" / "missing.png")
        elif kind == "symlink out":
            path.symlink_to("/etc/passwd")
        else:
            Image.new("L", (16, 16), color=20 * i).save(path)
        entries.append({"image": f"img/x{i}.png", "prompt": "describe", "caption": ["lungs clear", "left effusion"][i % 2]})
    (folder / "filter_cap.json").write_text(json.dumps(entries))
    return folder


def _skip_config(tmp_path, job, cache, datasets=("medvqa",), **run):
    from omegaconf import OmegaConf

    processor = {"name": "blip2_image_eval", "image_size": 8}
    sections = {}
    for name in datasets:
        data = tmp_path / f"data_{name}"
        if not data.exists():
            _hostile_dataset(data)
        sections[name] = {"build_info": {"storage": str(data), "prompt_path": None},
                          "vis_processor": {"train": processor, "eval": processor},
                          **({"sample_ratio": 1.0} if len(datasets) > 1 else {})}
    cfg = {"model": {"arch": "standin"}, "datasets": sections,
           "run": {"task": "image_text_pretrain", "device": "cpu", "max_epoch": 1, "batch_size_train": 2,
                   "batch_size_eval": 4, "init_lr": 1e-3, "log_freq": 1, "output_dir": str(tmp_path / "out"), "job_id": job,
                   "on_bad_sample": "skip", "cache_visual_features": cache, "cache_dir": str(tmp_path / "cache"),
                   **run}}
    path = tmp_path / f"{job}.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def _skipped_counts(job_dir):
    rows = [json.loads(line) for line in (job_dir / "log.jsonl").read_text().splitlines()]
    return [r["bad_samples"] for r in rows if r["kind"] == "skipped"]


@pytest.mark.parametrize("cache", [True, False], ids=["feature-cache", "images"])
@pytest.mark.parametrize("datasets", [("medvqa",), ("medvqa", "openi")], ids=["one-dataset", "mixture"])
def test_skip_policy_trains_through_every_kind_of_bad_image(tmp_path, caplog, cache, datasets):
    from tests.train_support import train_in_process

    caplog.set_level("WARNING")
    state = train_in_process(_skip_config(tmp_path, "skip", cache, datasets))
    good = len(datasets) * (12 - len(BAD_KINDS))
    loadable_bad = len(datasets) * 4  # the escaping symlink is dropped when the annotations are read
    entries = len(datasets) * 11
    # With the cache the bad samples are left out once; without it the batches shrink instead.
    assert state["global_step"] == (good // 2 if cache else entries // 2)
    counts = _skipped_counts(tmp_path / "out" / "skip")
    assert counts == [loadable_bad] if cache else counts[0] >= loadable_bad
    for i in (3, 5, 7, 9, 10):
        assert f"x{i}.png" in caplog.text
    assert "root:x" not in caplog.text  # never the bytes of the file a symlink points at
    if cache:
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == len({20 * i for i in range(12)
                                                                             if i not in BAD_KINDS})


@pytest.mark.parametrize("cache", [True, False], ids=["feature-cache", "images"])
def test_skip_policy_under_two_process_ddp(tmp_path, repo_root, cache):
    import os
    import subprocess
    import sys

    cfg = _skip_config(tmp_path, "ddp", cache, batch_size_train=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "tests.train_support", "--cfg-path", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "backend gloo, rank 0 of 2" in out.stderr
    counts = _skipped_counts(tmp_path / "out" / "ddp")
    assert counts == [4] if cache else counts[0] >= 4
    steps = sorted({json.loads(line)["step"] for line in (tmp_path / "out" / "ddp" / "log.jsonl").read_text().splitlines()
                    if json.loads(line)["kind"] == "train"})
    assert steps == list(range(1, (7 // 2 if cache else 11 // 2) + 1))


# ------------------------------------------------- 7. empty and corrupt inputs
def test_validate_and_training_refuse_an_empty_annotation_list(tmp_path, capsys):
    from tests.train_support import train_in_process
    from xraygpt.datasets import validate
    from xraygpt.datasets.annotations import AnnotationError

    data = _hostile_dataset(tmp_path / "data_medvqa")
    (data / "filter_cap.json").write_text("[]")
    assert validate.main([str(data)]) == 1
    assert "filter_cap.json: holds no entries (an empty list)" in capsys.readouterr().out
    with pytest.raises(AnnotationError, match=r"training annotations .*filter_cap.json hold no entries"):
        train_in_process(_skip_config(tmp_path, "empty", cache=False))
    (data / "filter_cap_val.json").write_text("[]")  # an empty val split alone is only a warning
    (data / "filter_cap.json").write_text(json.dumps([{"image": "img/x0.png", "prompt": "p", "caption": "c"}]))
    assert validate.main([str(data)]) == 0
    assert "warning: " in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_feature_cache_entry_is_named_dropped_and_recomputed(tmp_path, caplog, damage):
    import torch
    from safetensors.torch import load_file

    from tests.train_support import train_in_process

    cfg = _skip_config(tmp_path, "first", cache=True)
    train_in_process(cfg)
    entries = sorted((tmp_path / "cache").rglob("*.safetensors"))
    victim = entries[0]
    original = load_file(str(victim))["features"].clone()  # a copy: the file is rewritten below
    victim.write_bytes(victim.read_bytes()[:-7] if damage == "truncated" else b"")
    caplog.set_level("WARNING")
    train_in_process(cfg, "run.job_id=second")
    assert f"feature cache entry {victim} is truncated or corrupt" in caplog.text
    assert sorted((tmp_path / "cache").rglob("*.safetensors")) == entries
    recomputed = load_file(str(victim))["features"]  # alone now, in a batch before: equal up to float rounding
    assert recomputed.shape == original.shape and torch.allclose(recomputed, original, atol=1e-6)


def test_an_empty_or_cut_weight_file_gives_a_real_reason(tmp_path):
    import torch

    from xraygpt.models.checkpoint_io import CheckpointError, read_state_dict

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pth: the file is empty \(0 bytes"):
        read_state_dict(empty, "LLM projection weights")
    cut = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(64)}, cut)
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"cannot read weights from .*cut.pth: \S"):
        read_state_dict(cut, "weights")


# ------------------------------------------------- 5. dataset image paths stay inside their dataset
def _escaping_dataset(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "image").mkdir(parents=True)
    outside.mkdir()
    for folder, name in ((outside, "o.png"), (data / "image", "ok.png"), (data / "image", "target.png")):
        Image.new("L", (16, 16), color=90).save(folder / name)
    (data / "image" / "link_out.png").symlink_to(outside / "o.png")
    (data / "image" / "passwd.png").symlink_to("/etc/passwd")
    (data / "image" / "link_in.png").symlink_to(data / "image" / "target.png")
    images = [str(outside / "o.png"), "../outside/o.png", "image/link_out.png", "image/passwd.png",
              "image/ok.png", "image/link_in.png"]
    (data / "filter_cap.json").write_text(json.dumps([{"image": i, "prompt": "p", "caption": "c"} for i in images]))
    return data


def test_validate_reports_every_escaping_image_path(tmp_path, capsys):
    from xraygpt.datasets import validate

    data = _escaping_dataset(tmp_path)
    assert validate.main([str(data)]) == 1
    out = capsys.readouterr().out
    for index in range(4):
        assert f"filter_cap.json[{index}]: image " in out
    assert out.count("outside the dataset folder") == 4 and out.count("through a symlink") == 2
    assert "resolves through a symlink to /etc/passwd" in out and "root:" not in out
    assert "2 entries usable" in out  # the plain image and the symlink that stays inside
    assert validate.main([str(data), "--allow-outside-paths"]) == 1  # now only /etc/passwd fails, as no image
    out = capsys.readouterr().out
    assert "passwd.png: not a recognised image" in out and "root:" not in out and "5 entries usable" in out


def test_training_refuses_escaping_paths_unless_allowed(tmp_path):
    from xraygpt.datasets.annotations import AnnotationError
    from xraygpt.datasets.builders import MedVQABuilder

    data = _escaping_dataset(tmp_path)
    section = {"build_info": {"storage": str(data), "prompt_path": None},
               "vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 8}}}
    with pytest.raises(AnnotationError, match=r"(?s)4 bad entries .*outside the dataset folder"):
        MedVQABuilder(section).build_datasets()
    kept = MedVQABuilder(section, on_bad_sample="skip").build_datasets()["train"]
    assert [r.image_path.name for r in kept.records] == ["ok.png", "link_in.png"]
    section["build_info"]["allow_outside_paths"] = True
    assert len(MedVQABuilder(section, on_bad_sample="skip").build_datasets()["train"]) == 6


def test_an_image_decode_error_never_quotes_the_file(tmp_path):
    from xraygpt.datasets.image_io import ImageLoadError, load_medical_image

    secret = tmp_path / "secret.txt"
    secret.write_text("api_key=hunter2\n")
    (tmp_path / "x.png").symlink_to(secret)
    with pytest.raises(ImageLoadError) as caught:
        load_medical_image(tmp_path / "x.png")
    assert "hunter2" not in str(caught.value) and "16 bytes of unknown content" in str(caught.value)


# ------------------------------------------------- 2. data creation never overwrites an unrelated folder
def test_create_refuses_a_folder_it_did_not_make_and_overwrite_replaces_only_its_files(sample_data_dir, tmp_path,
                                                                                       capsys):
    from xraygpt.data_creation.cli import openi_main

    out = tmp_path / "u"
    out.mkdir()
    (out / "filter_cap.json").write_text('{"mine": 1}\n')
    (out / "notes.txt").write_text("keep me")
    args = ["--root", str(sample_data_dir / "openi_kaggle"), "--out", str(out), "--offline", "--no-progress",
            "--sample-size", "6"]
    assert openi_main(args) == 2
    assert "holds no dataset made by this tool" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["filter_cap.json", "notes.txt"]
    assert (out / "filter_cap.json").read_text() == '{"mine": 1}\n'

    assert openi_main([*args, "--overwrite"]) == 0
    assert isinstance(json.loads((out / "filter_cap.json").read_text()), list)
    assert (out / "notes.txt").read_text() == "keep me"  # --overwrite deletes only what the tool writes
    before = (out / "filter_cap.json").read_bytes()
    assert openi_main(args) == 0  # the same command resumes its own dataset
    assert (out / "filter_cap.json").read_bytes() == before

    assert openi_main([*args[:-1], "5"]) == 2  # other options: refused, naming what differs
    assert "differs in: options.sample_size" in capsys.readouterr().err
    assert (out / "filter_cap.json").read_bytes() == before


def test_create_resumes_an_interrupted_run_that_has_no_manifest_yet(sample_data_dir, tmp_path):
    from xraygpt.data_creation.cli import openi_main

    out = tmp_path / "d"
    args = ["--root", str(sample_data_dir / "openi_kaggle"), "--out", str(out), "--offline", "--no-progress",
            "--sample-size", "4"]
    assert openi_main(args) == 0
    (out / "manifest.json").unlink()  # as if killed before the end
    assert openi_main(args) == 0 and (out / "manifest.json").is_file()


def test_merge_refuses_a_foreign_out_folder_unless_overwrite(tmp_path):
    from tests.test_datacreation_tools import _dataset
    from xraygpt.data_creation.merge import merge_datasets
    from xraygpt.data_creation.records import DataCreationError

    a = _dataset(tmp_path / "a", {"train": ["g1"], "val": [], "test": []})
    b = _dataset(tmp_path / "b", {"train": ["r1"], "val": [], "test": []})
    out = tmp_path / "merged"
    out.mkdir()
    (out / "manifest.json").write_text('{"mine": true}')
    with pytest.raises(DataCreationError, match="holds no dataset made by this tool"):
        merge_datasets([a, b], out, ["openi", "roco"])
    assert (out / "manifest.json").read_text() == '{"mine": true}'
    merge_datasets([a, b], out, ["openi", "roco"], overwrite=True)
    merge_datasets([a, b], out, ["openi", "roco"])  # the same merge again is fine
    with pytest.raises(DataCreationError, match="differs in: inputs"):
        merge_datasets([a], out, ["openi"])


# ------------------------------------------------- 4. reruns and resumes into an existing job
def _log_rows(job_dir):
    return [json.loads(line) for line in (job_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def finished_job(tmp_path):
    """A finished stand-in run (checkpoints at steps 2, 4, 6) and its config."""
    from tests.train_support import train_in_process, write_config

    cfg = write_config(tmp_path, run={"save_freq": 2, "keep_last_n": 0, "max_epoch": 1})
    train_in_process(cfg)
    return cfg, tmp_path / "out" / "job"


def _snapshot(job_dir):
    return {p.relative_to(job_dir): p.read_bytes() for p in sorted(job_dir.rglob("*")) if p.is_file()}


def test_rerunning_a_finished_job_is_refused_at_start_up_and_touches_nothing(finished_job, monkeypatch):
    from tests import train_support
    from tests.train_support import train_in_process
    from xraygpt.common.errors import ConfigurationError

    cfg, job = finished_job
    before = _snapshot(job)
    steps = []
    monkeypatch.setattr(train_support.StandInModel, "forward", lambda self, s: steps.append(1))
    with pytest.raises(ConfigurationError, match=r"already holds a run .*3 checkpoint\(s\).*new run.job_id, resume "
                                                 r"this job with run.resume_ckpt_path=latest, or pass --overwrite"):
        train_in_process(cfg, "run.init_lr=0.5")
    with pytest.raises(ConfigurationError, match=r"resuming step_00000002 while newer checkpoints .*step_00000004"):
        train_in_process(cfg, f"run.resume_ckpt_path={job}/checkpoints/step_00000002")
    assert steps == []  # refused before a single training step
    assert _snapshot(job) == before  # log.jsonl and config.yaml of the finished run untouched


def test_overwrite_replaces_the_job(finished_job, tmp_path):
    from tests.train_support import train_in_process

    cfg, job = finished_job
    (job / "notes.txt").write_text("mine")
    train_in_process(cfg, "run.overwrite=true", "run.max_epoch=2", "run.save_freq=0")
    steps = [r["step"] for r in _log_rows(job) if r["kind"] == "train"]
    assert steps == list(range(1, 13)) and (job / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["best.json", "step_00000006", "step_00000012"]


def test_train_cli_refuses_in_one_line_and_takes_overwrite(finished_job, capsys, caplog):
    from xraygpt import train
    from xraygpt.common.cli import run_cli

    cfg, job = finished_job
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: train.main(["--cfg-path", str(cfg)]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: run.job_id already holds a run")
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: train.main(["--cfg-path", str(cfg), "--overwrite"]))
    assert stop.value.code == 0 and "run.overwrite: removed the earlier run" in caplog.text


def test_resume_latest_continues_the_job_without_duplicate_log_rows(tmp_path):
    from tests.train_support import final_weights, train_in_process, write_config

    run = {"save_freq": 2, "keep_last_n": 0, "max_epoch": 2}
    reference = write_config(tmp_path, run={**run, "job_id": "reference"}, model={"dropout": 0.2})
    train_in_process(reference)
    cfg = write_config(tmp_path, run=run, model={"dropout": 0.2}, name="job.yaml")
    train_in_process(cfg)  # a finished run of 12 steps ...
    job = tmp_path / "out" / "job"
    import shutil as _shutil

    for later in ("step_00000008", "step_00000010", "step_00000012"):  # ... that was cut off after step 6
        _shutil.rmtree(job / "checkpoints" / later)
    train_in_process(cfg, "run.resume_ckpt_path=latest")
    rows = _log_rows(job)
    keys = [(r["kind"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys))  # no step logged twice
    assert [s for k, s in keys if k == "train"] == list(range(1, 13))
    ref = final_weights(tmp_path / "out" / "reference")
    res = final_weights(job)
    assert all(torch_equal(ref[k], res[k]) for k in ref)


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_resume_latest_falls_back_when_the_newest_checkpoint_is_corrupt(finished_job, caplog):
    from tests.train_support import train_in_process
    from xraygpt.common import checkpointing as ckpt

    cfg, job = finished_job
    newest = job / "checkpoints" / "step_00000006"
    weights = newest / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-5])  # a truncated save
    caplog.set_level("INFO")
    state = train_in_process(cfg, "run.resume_ckpt_path=latest")
    assert "newest checkpoint" in caplog.text and "falling back to the previous complete checkpoint" in caplog.text
    assert f"resumed from {job / 'checkpoints' / 'step_00000004'}" in caplog.text
    assert state["global_step"] == 6
    assert (job / "checkpoints" / ".corrupt-step_00000006").is_dir()  # set aside, not deleted
    assert ckpt.latest_checkpoint(job / "checkpoints") == newest  # the rerun saved a good step 6 again


def test_resume_latest_on_a_new_job_starts_fresh(tmp_path):
    from tests.train_support import train_in_process, write_config

    state = train_in_process(write_config(tmp_path, run={"max_epoch": 1, "resume_ckpt_path": "latest"}))
    assert state["global_step"] == 6


# ------------------------------------------------- cases that already held (kept as regression tests)
class _RunsCode:
    """Unpickling this would run a shell command (what a crafted .pth does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_crafted_pickles_run_no_code_as_weights_or_as_a_resume_checkpoint(tmp_path):
    import hashlib

    import torch

    from tests.test_train_checkpointing import _save
    from xraygpt.common import checkpointing as ckpt
    from xraygpt.models.checkpoint_io import CheckpointError, read_state_dict

    marker = tmp_path / "pwned"
    crafted = tmp_path / "stage2.pth"
    torch.save({"model": {"llama_proj.weight": _RunsCode(marker)}}, crafted)
    with pytest.raises(CheckpointError, match="cannot read LLM weights from .*stage2.pth"):
        read_state_dict(crafted, "LLM weights")

    folder = _save(tmp_path / "step_1")  # a valid checkpoint whose training state is then swapped, hashes fixed
    state = folder / ckpt.STATE_FILE
    torch.save({"counters": _RunsCode(marker)}, state)
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    meta["sha256"][ckpt.STATE_FILE] = hashlib.sha256(state.read_bytes()).hexdigest()
    (folder / ckpt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint .*cannot read it"):
        ckpt.load_checkpoint(folder)
    assert not marker.exists()


def test_a_kill_during_a_training_save_resumes_from_latest_bit_identical(tmp_path, repo_root):
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    import torch

    from tests.train_support import final_weights, train_in_process, write_config

    run = {"save_freq": 2, "keep_last_n": 0, "max_epoch": 1}
    reference = write_config(tmp_path, run={**run, "job_id": "reference"}, model={"dropout": 0.2})
    train_in_process(reference)
    cfg = write_config(tmp_path, run=run, model={"dropout": 0.2}, name="job.yaml")
    script = textwrap.dedent(f"""
        import time, torch
        from xraygpt.common import checkpointing as ckpt
        real_save = torch.save
        def slow_save(obj, path):
            real_save(obj, path)
            if "step_00000004" in str(path):  # inside the temporary folder of the step-4 save
                print("IN_SAVE", flush=True)
                time.sleep(120)
        ckpt.torch.save = slow_save
        from tests.train_support import train_in_process
        train_in_process({str(cfg)!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo_root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "IN_SAVE"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    job = tmp_path / "out" / "job"
    assert sorted(p.name for p in (job / "checkpoints").iterdir())[-1] == "step_00000002"
    train_in_process(cfg, "run.resume_ckpt_path=latest")
    ref, res = final_weights(tmp_path / "out" / "reference"), final_weights(job)
    assert all(torch.equal(ref[k], res[k]) for k in ref)
    keys = [(r["kind"], r["step"]) for r in _log_rows(job)]
    assert len(keys) == len(set(keys)) and [s for k, s in keys if k == "train"] == list(range(1, 7))


def test_the_demo_server_refuses_path_traversal(tmp_path):
    import socket
    import urllib.error
    import urllib.request

    from xraygpt import demo

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    examples = demo.example_images(tmp_path, count=1)
    app = demo.build_demo(demo.DemoHandlers(chat=None, max_file_size=1024), examples, 1, 4)
    options = demo.launch_options(demo.build_parser().parse_args(["--cfg-path", "x", "--port", str(port)]))
    app.launch(**options, allowed_paths=[str(tmp_path)], prevent_thread_lock=True, quiet=True)
    try:
        def status(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={path}", timeout=30) as reply:
                    return reply.status, reply.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert status(examples[0])[0] == 200  # the served example is reachable ...
        for attack in ("/etc/passwd", "../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                       f"{tmp_path}/../../../etc/passwd"):
            code, body = status(attack)
            assert code in (403, 404) and b"root:" not in body, attack  # ... nothing outside it is
    finally:
        app.close()
    handlers = demo.DemoHandlers(chat=None, max_file_size=1024)
    assert "not a supported file type" in handlers.upload("../../../../etc/passwd")[3]
