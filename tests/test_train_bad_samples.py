"""run.on_bad_sample during training, with the real dataset builder (medvqa) and the stand-in model."""
import json

import pytest
from PIL import Image

from tests.train_support import train_in_process


def _dataset(folder, n=12, bad=(3, 7)):
    (folder / "img").mkdir(parents=True)
    entries = []
    for i in range(n):
        path = folder / "img" / f"x{i}.png"
        if i in bad:
            path.write_bytes(b"not a png at all")
        else:
            Image.new("L", (16, 16), color=20 * i).save(path)
        entries.append({"image": f"img/x{i}.png", "prompt": "describe", "caption": ["lungs clear", "left effusion"][i % 2]})
    (folder / "filter_cap.json").write_text(json.dumps(entries))


def _config(tmp_path, policy):
    from omegaconf import OmegaConf

    data = tmp_path / "data"
    if not data.exists():
        _dataset(data)
    processor = {"name": "blip2_image_eval", "image_size": 8}
    cfg = {
        "model": {"arch": "standin"},
        "datasets": {"medvqa": {"build_info": {"storage": str(data), "prompt_path": None},
                                "vis_processor": {"train": processor, "eval": processor}}},
        "run": {"task": "image_text_pretrain", "device": "cpu", "max_epoch": 1, "batch_size_train": 2,
                "init_lr": 1e-3, "output_dir": str(tmp_path / "out"), "job_id": policy, "on_bad_sample": policy},
    }
    path = tmp_path / f"{policy}.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def test_error_policy_stops_naming_the_file(tmp_path):
    from xraygpt.datasets import BadSampleError

    with pytest.raises(BadSampleError, match=r"x[37]\.png"):
        train_in_process(_config(tmp_path, "error"))


def test_skip_policy_trains_on_and_counts(tmp_path, caplog):
    caplog.set_level("WARNING")
    state = train_in_process(_config(tmp_path, "skip"))
    assert state["global_step"] == 6  # 12 samples / batch 2: every step ran, on the good samples
    records = [json.loads(line) for line in (tmp_path / "out" / "skip" / "log.jsonl").read_text().splitlines()]
    assert [r["bad_samples"] for r in records if r["kind"] == "skipped"] == [2]
    assert "x3.png" in caplog.text and "x7.png" in caplog.text
