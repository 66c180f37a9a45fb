"""Builders on small fixture folders: both schemas, splits, prompts, processors, bad-sample policy, collate."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from xraygpt.common.registry import registry
from xraygpt.datasets import BadSampleError, collate
from xraygpt.datasets.annotations import AnnotationError
from xraygpt.datasets.prompts import load_prompts, normalise_prompt, pick_prompt

EVAL_32 = {"eval": {"name": "blip2_image_eval", "image_size": 32}, "train": {"name": "blip2_image_train", "image_size": 32}}


def _image(path, value=100, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def _merged_folder(root, n=6, with_split=False):
    entries = []
    for i in range(n):
        _image(root / "imgs" / f"x{i}.png", value=20 * i)
        entry = {"image": f"imgs/x{i}.png", "prompt": f"Question {i}?", "caption": f"Report  {i} ."}
        if with_split:
            entry["split"] = ["train", "train", "train", "train", "valid", "test"][i]
        entries.append(entry)
    (root / "filter_cap.json").write_text(json.dumps(entries))
    return root


def _build(name, root, **extra):
    section = {"build_info": {"storage": str(root), **extra.pop("build_info", {})}, "vis_processor": EVAL_32, **extra}
    return registry.get_builder_class(name)(section).build_datasets()


def test_every_builder_is_registered_with_its_defaults():
    for name in ("medvqa", "openi", "roco", "mimic", "phantoms"):
        builder = registry.get_builder_class(name)({"build_info": {"storage": "/nowhere"}})
        assert builder.config.data_type == "images"
        assert builder.config.vis_processor["train"]["name"] == "blip2_image_train"
        assert builder.config.build_info.storage == "/nowhere"  # user value overrides the default
    assert registry.get_builder_class("mimic").default_config().build_info.image_ext == ".jpg"


def test_merged_format_with_split_field(tmp_path):
    datasets = _build("medvqa", _merged_folder(tmp_path, with_split=True))
    assert {k: len(v) for k, v in datasets.items()} == {"train": 4, "val": 1, "test": 1}
    sample = datasets["val"][0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample == {**sample, "prompt": " Question 4?", "caption": "Report 4.", "image_id": "x4"}


def test_separate_split_files_and_absolute_image_paths(tmp_path):
    root = _merged_folder(tmp_path / "set")
    outside = _image(tmp_path / "elsewhere" / "abs.png")
    (root / "filter_cap_test.json").write_text(json.dumps([{"image": str(outside), "prompt": "q", "caption": "c"}]))
    datasets = _build("roco", root, build_info={"allow_outside_paths": True})  # refused without it
    assert set(datasets) == {"train", "test"} and len(datasets["test"]) == 1
    assert datasets["test"][0]["image_id"] == "abs"


def test_xraygpt_schema_and_mimic_layout_draw_prompts_deterministically(tmp_path):
    root = tmp_path / "mimic"
    ids = ["p10_s1", "p10_s2", "p11_s3"]
    for i, image_id in enumerate(ids):
        _image(root / "image" / f"{image_id}.jpg", value=50 * i)
    _image(root / "image" / "p11_s3.png")  # a same-named PNG must not be picked by the .jpg layout
    (root / "filter_cap.json").write_text(json.dumps({"annotations": [{"image_id": i, "caption": f"cap {i}"} for i in ids]}))
    first = _build("mimic", root)["train"]
    again = _build("mimic", root)["train"]
    prompts = load_prompts()
    assert [first[i]["prompt"] for i in range(3)] == [again[i]["prompt"] for i in range(3)]
    assert all(first[i]["prompt"] in prompts for i in range(3))
    assert [r.image_path.name for r in first.records] == [f"{i}.jpg" for i in ids]
    reseeded = _build("mimic", root, build_info={"prompt_seed": 1})["train"]
    expected = [pick_prompt(prompts, i, 1) for i in ids]
    assert [reseeded[i]["prompt"] for i in range(3)] == expected


def test_prompt_file_forms(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("<Img><ImageHere></Img> Describe this image.\n# comment\n\n  Plain line.  \n")
    assert load_prompts(path) == [" Describe this image.", " Plain line."]
    assert normalise_prompt("What is shown?") == " What is shown?"
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        load_prompts(tmp_path / "none.txt")
    shares = np.bincount([load_prompts().index(pick_prompt(load_prompts(), f"id{i}")) for i in range(1200)])
    assert shares.min() > 50  # every shipped prompt gets used


def test_shared_xraygpt_openi_sample_builds(sample_data_dir):
    datasets = _build("openi", sample_data_dir / "xraygpt_openi")
    assert len(datasets["train"]) == 6
    assert datasets["train"][0]["image_id"] == "1_IM-0001-4001.dcm"


def test_config_errors_are_specific(tmp_path):
    with pytest.raises(AnnotationError, match="did you mean 'storage'"):
        registry.get_builder_class("medvqa")({"build_info": {"storag": "x"}})
    with pytest.raises(AnnotationError, match="did you mean 'sample_ratio'"):
        registry.get_builder_class("medvqa")({"sample_ration": 2})
    with pytest.raises(FileNotFoundError, match="storage folder .* not found"):
        _build("medvqa", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="training annotations .*filter_cap.json not found"):
        _build("medvqa", tmp_path / "empty")
    with pytest.raises(AnnotationError, match="unknown split 'extra'"):
        _build("medvqa", tmp_path / "empty", build_info={"ann_files": {"extra": "x.json"}})


def test_evaluation_only_dataset_without_train_file(tmp_path):
    root = _merged_folder(tmp_path)
    (root / "filter_cap.json").rename(root / "held_out.json")
    datasets = _build("medvqa", root, build_info={"ann_files": {"train": None, "test": "held_out.json"}})
    assert set(datasets) == {"test"} and len(datasets["test"]) == 6


def test_bad_entries_error_or_skip_with_count(tmp_path, caplog):
    root = _merged_folder(tmp_path)
    entries = json.loads((root / "filter_cap.json").read_text())
    entries += [{"image": "imgs/x0.png", "prompt": "q"}, {"image": "imgs/x1.png", "prompt": "q", "caption": 5}]
    (root / "filter_cap.json").write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"(?s)2 bad entries .*\[6\]: missing field 'caption'.*validate"):
        _build("medvqa", root)
    with caplog.at_level(logging.WARNING):
        datasets = registry.get_builder_class("medvqa")(
            {"build_info": {"storage": str(root)}}, on_bad_sample="skip"
        ).build_datasets()
    assert len(datasets["train"]) == 6
    assert "skipped 2 bad annotation entries" in caplog.text


def test_unreadable_image_error_names_file_or_is_skipped_and_counted(tmp_path, caplog):
    root = _merged_folder(tmp_path, n=4)
    (root / "imgs" / "x2.png").write_bytes(b"")
    strict = _build("medvqa", root)["train"]
    with pytest.raises(BadSampleError, match=r"medvqa/train\[2\].*x2.png: file is empty .*on_bad_sample=skip"):
        strict[2]
    lenient = _build("medvqa", root, on_bad_sample="skip")["train"]
    with caplog.at_level(logging.WARNING):
        batch = collate([lenient[i] for i in range(4)])
    assert batch["num_skipped"] == 1 and batch["image"].shape == (3, 3, 32, 32)
    assert batch["image_id"] == ["x0", "x1", "x3"] and lenient.skipped == [str(root / "imgs" / "x2.png")]
    assert "skipping bad sample" in caplog.text and "x2.png" in caplog.text
    assert collate([None, None]) is None


def test_dataloader_with_workers_and_collate(tmp_path):
    datasets = _build("medvqa", _merged_folder(tmp_path))
    loader = torch.utils.data.DataLoader(datasets["train"], batch_size=4, num_workers=1, collate_fn=collate)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [4, 2]
    assert batches[0]["caption"][1] == "Report 1." and batches[1]["num_skipped"] == 0


def test_config_layering_selects_dataset_defaults(tmp_path):
    from xraygpt.common.config import Config

    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(
        "run: {task: image_text_pretrain}\n"
        "datasets:\n  openi:\n    build_info: {storage: /data/openi}\n    vis_processor: {train: {image_size: 96}}\n"
    )
    section = Config({"cfg_path": str(cfg_path)}).datasets_cfg.openi
    assert section.build_info.storage == "/data/openi" and section.build_info.image_dir == "image"
    assert section.vis_processor.train == {"name": "blip2_image_train", "image_size": 96}


def test_tasks_filter_keeps_listed_entry_types(tmp_path):
    root = _merged_folder(tmp_path, n=3)
    entries = json.loads((root / "filter_cap.json").read_text())
    for entry, task in zip(entries, ["report", "vqa", "vqa"]):
        entry["task"] = task
    (root / "filter_cap.json").write_text(json.dumps(entries))
    assert len(_build("medvqa", root)["train"]) == 3
    reports = _build("medvqa", root, build_info={"tasks": ["report"]})["train"]
    assert [r.task for r in reports.records] == ["report"]
