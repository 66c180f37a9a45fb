"""``python -m xraygpt.generate --structured`` (extract mode) on the tiny seed-reference model."""
from __future__ import annotations

import hashlib
import json
import shutil

import torch

from xraygpt import generate
from xraygpt.conversation import loading
from xraygpt.structured import extract_report, schema_errors


def test_structured_extract_is_written_per_image_and_read_from_the_report(repo_root, seed_reference_dir, tmp_path,
                                                                          monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = tmp_path / "images"
    shutil.copytree(seed_reference_dir / "images", images)
    out = tmp_path / "r.jsonl"
    cfg = str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")
    try:
        assert generate.main(["--cfg-path", cfg, "--images", str(images), "--out", str(out), "--max-new-tokens", "40",
                              "--batch-size", "2", "--structured", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    ckpt_hash = hashlib.sha256((seed_reference_dir / "xraygpt_stage2.pth").read_bytes()).hexdigest()
    for record in records:
        structured = record["structured"]
        assert schema_errors(structured) == []
        assert structured["generator"] == {"mode": "extract", "model": f"mini_gpt4:{cfg}",
                                           "checkpoint_sha256": ckpt_hash, "settings": record["settings"]}
        assert structured == extract_report(record["report"], structured["generator"])
