"""``python -m xraygpt.generate --study-manifest studies.jsonl``: one report per study from all its views."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from xraygpt import generate
from xraygpt.common.errors import DataError
from xraygpt.conversation import loading


@pytest.fixture
def manifest(tmp_path, seed_reference_dir):
    for name in ("xray_0.png", "xray_1.png", "xray_2.png"):
        shutil.copy(seed_reference_dir / "images" / name, tmp_path / name)
    lines = [
        {"id": "s1", "image": ["xray_0.png", "xray_1.png"], "views": ["Frontal", "Lateral"]},
        {"id": "s2", "image": ["xray_2.png"]},
        {"id": "s3", "image": ["xray_1.png", "missing.png"]},
    ]
    path = tmp_path / "studies.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _run(repo_root, *args):
    cfg = str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")
    return generate.main(["--cfg-path", cfg, "--max-new-tokens", "10", "--no-progress", "--device", "cpu", *map(str, args)])


def test_study_manifest_reports_resume_and_errors(repo_root, manifest, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "r.jsonl"
    try:
        assert _run(repo_root, "--study-manifest", manifest, "--out", out, "--batch-size", "3",
                    "--options", "model.max_images=2") == 1  # s3 cannot be read
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["study_id"] for r in records] == ["s3", "s1", "s2"]  # the error line is written first
        assert "missing.png" in records[0]["error"] and "report" not in records[0]
        s1 = records[1]
        assert s1["image"] == [str(manifest.parent / "xray_0.png"), str(manifest.parent / "xray_1.png")]
        assert s1["views"] == ["Frontal", "Lateral"] and records[2]["views"] is None

        cfg = loading.Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml"),
                              "options": ["model.max_images=2"]})
        model, processor = loading.load_model_and_processor(cfg, torch.device("cpu"))
        from xraygpt.datasets.image_io import load_medical_image

        pixels = torch.stack([processor(load_medical_image(manifest.parent / n)) for n in ("xray_0.png", "xray_1.png", "xray_2.png")])
        expected = model.generate(pixels, [generate.DEFAULT_PROMPT] * 2, image_counts=[2, 1],
                                  views=[("Frontal", "Lateral"), None], max_new_tokens=10)
        assert [s1["report"], records[2]["report"]] == expected
        # resume: the finished studies are skipped, the unreadable one is tried again (its unchanged error
        # is not written twice)
        assert _run(repo_root, "--study-manifest", manifest, "--out", out, "--options", "model.max_images=2") == 1
        assert out.read_text().splitlines() == [json.dumps(r, ensure_ascii=False) for r in records]
    finally:
        torch.set_num_threads(threads)


def test_study_manifest_needs_max_images_and_good_lines(repo_root, manifest, tmp_path):
    with pytest.raises(DataError, match="a sample has 2 images but model.max_images is 1"):
        _run(repo_root, "--study-manifest", manifest, "--out", tmp_path / "a.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "image": ["a.png"], "views": ["PA", "LAT"]}\n')
    with pytest.raises(DataError, match=rf'^{bad}:1: "views" must name one view per image \(1\)$'):
        _run(repo_root, "--study-manifest", bad, "--out", tmp_path / "b.jsonl")
