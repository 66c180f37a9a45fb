"""``python -m xraygpt.generate``: batching, resume, error lines, input expansion."""
import functools
import json
import shutil

import pytest

from xraygpt import generate
from xraygpt.common.config import ConfigError
from xraygpt.conversation import loading


@pytest.fixture(scope="module")
def cached_loader():
    """Build the tiny model once for the module; every CLI run below reuses it."""
    load = loading.load_model_and_processor
    return functools.lru_cache(maxsize=None)(lambda cfg_path, device: load(loading.Config({"cfg_path": cfg_path}), device))


@pytest.fixture
def cli(monkeypatch, repo_root, cached_loader, seed_reference_dir):
    monkeypatch.setattr(loading, "load_model_and_processor", lambda cfg, device: cached_loader(str(cfg.cfg_path), device))
    cfg = str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")

    def run(*args):
        return generate.main(["--cfg-path", cfg, "--max-new-tokens", "12", "--no-progress", *map(str, args)])

    return run


@pytest.fixture
def image_dir(tmp_path, seed_reference_dir):
    folder = tmp_path / "images"
    shutil.copytree(seed_reference_dir / "images", folder)
    return folder


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_prompt_reproduces_the_reference_greedy_report(cli, cached_loader, repo_root, image_dir, tmp_path,
                                                               seed_reference_dir):
    """The default prompt is the fixture's greedy-decoding prompt: the report is the reference tokens up to '###'."""
    import torch

    assert cli("--images", image_dir / "xray_0.png", "--out", tmp_path / "r.jsonl", "--max-new-tokens", "16") == 0
    tokens = torch.load(seed_reference_dir / "expected.pt", weights_only=True)["greedy_tokens"].tolist()
    model, _ = cached_loader(str(repo_root / "eval_configs" / "seed_reference_tiny.yaml"), torch.device("cpu"))
    stop = model.tokenizer.convert_ids_to_tokens(tokens).index("▁###")
    assert _records(tmp_path / "r.jsonl")[0]["report"] == model.tokenizer.decode(tokens[:stop]).strip()


def test_batched_reports_equal_one_by_one_reports(cli, image_dir, tmp_path):
    assert cli("--images", image_dir, "--out", tmp_path / "batched.jsonl", "--batch-size", "3") == 0
    assert cli("--images", image_dir, "--out", tmp_path / "single.jsonl", "--batch-size", "1") == 0
    batched, single = _records(tmp_path / "batched.jsonl"), _records(tmp_path / "single.jsonl")
    assert [r["image"] for r in batched] == [str(p) for p in sorted(image_dir.glob("*.png"))]
    assert [r["report"] for r in batched] == [r["report"] for r in single]
    assert all(r["report"] for r in batched)
    first = batched[0]
    assert first["image_id"] == "xray_0" and first["settings"]["batch_size"] == 3
    assert first["settings"]["max_new_tokens"] == 12 and first["settings"]["temperature"] == 0.0
    assert first["seconds"] > 0 and first["prompt"] == generate.DEFAULT_PROMPT


def test_the_generation_section_sets_decoding_and_a_flag_overrides_it(cli, repo_root, image_dir, tmp_path):
    cfg = str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")
    section = ["--options", "generation.max_new_tokens=3", "generation.repetition_penalty=1.2"]
    out = tmp_path / "section.jsonl"
    assert generate.main(["--cfg-path", cfg, "--no-progress", "--images", str(image_dir / "xray_0.png"),
                          "--out", str(out), *section]) == 0
    record = _records(out)[0]
    assert record["settings"]["max_new_tokens"] == 3 and record["settings"]["repetition_penalty"] == 1.2
    assert 1 <= record["new_tokens"] <= 3
    assert cli("--images", image_dir / "xray_0.png", "--out", tmp_path / "flag.jsonl", *section) == 0  # --max-new-tokens 12
    assert _records(tmp_path / "flag.jsonl")[0]["settings"]["max_new_tokens"] == 12


def test_resume_skips_finished_images_and_repairs_a_torn_line(cli, image_dir, tmp_path):
    out = tmp_path / "reports.jsonl"
    assert cli("--images", image_dir / "xray_0.png", image_dir / "xray_1.png", "--out", out) == 0
    before = out.read_text()
    with out.open("a") as handle:
        handle.write('{"image": "half-writ')  # a crash in the middle of a line
    assert cli("--images", image_dir, "--out", out) == 0
    records = _records(out)
    assert out.read_text().startswith(before)
    assert [r["image_id"] for r in records] == ["xray_0", "xray_1", "xray_2"]
    assert cli("--images", image_dir, "--out", out) == 0  # nothing left to do
    assert len(_records(out)) == 3


def test_unreadable_images_get_an_error_line_and_are_retried(cli, image_dir, tmp_path):
    (image_dir / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "reports.jsonl"
    assert cli("--images", image_dir, "--out", out, "--batch-size", "2") == 1
    records = {r["image_id"]: r for r in _records(out)}
    assert set(records) == {"broken", "xray_0", "xray_1", "xray_2"}
    assert "broken.png" in records["broken"]["error"] and "report" not in records["broken"]
    (image_dir / "broken.png").unlink()
    shutil.copy(image_dir / "xray_0.png", image_dir / "broken.png")
    assert cli("--images", image_dir, "--out", out) == 0
    assert [r["image_id"] for r in _records(out) if "report" in r][-1] == "broken"


def test_image_sources_expand_in_order(tmp_path, image_dir):
    listing = tmp_path / "list.txt"
    listing.write_text("images/xray_2.png\n\nimages/xray_0.png\n")
    found = generate.collect_images([str(listing), str(image_dir / "xray_1.*"), str(image_dir)])
    assert [p.name for p in found] == ["xray_2.png", "xray_0.png", "xray_1.png"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        generate.collect_images([str(image_dir / "*.dcm")])
    with pytest.raises(FileNotFoundError, match="not a file, folder"):
        generate.collect_images([str(tmp_path / "missing.png")])


def test_a_corrupt_output_file_is_not_overwritten(tmp_path):
    out = tmp_path / "reports.jsonl"
    out.write_text("this is not json\n")
    with pytest.raises(ConfigError, match="reports.jsonl:1 is not JSON"):
        generate.finished_images(out)
    assert out.read_text() == "this is not json\n"


def test_inference_prefers_an_eval_image_processor():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    def chosen(sections):
        return loading.eval_processor_config(SimpleNamespace(config=OmegaConf.create(sections), cfg_path="cfg.yaml"))

    train_only = {"vis_processor": {"train": {"name": "blip2_image_train"}}}
    model_eval = {"vis_processor": {"eval": {"name": "blip2_image_eval"}}}
    assert chosen({"datasets": {"openi": train_only}, "preprocess": model_eval})["name"] == "blip2_image_eval"
    assert chosen({"datasets": {"openi": train_only}})["name"] == "blip2_image_train"
    with pytest.raises(ConfigError, match="cfg.yaml: no image processor configured"):
        chosen({"datasets": {}})
