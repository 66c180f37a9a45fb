"""Evaluation CLI plumbing with a stand-in model and builder registered for the test.

The real model/builders come from other parts; here a tiny test double implements the documented
interfaces (``from_config``, ``generate(images, prompts, **kw) -> list[str]``, ``build_datasets()``).
"""
from __future__ import annotations

import json

import pytest
import torch

from xraygpt import evaluate
from xraygpt.common.config import ConfigError
from xraygpt.common.registry import registry

CAPTIONS = [
    "There is a large right pleural effusion.",
    "No pleural effusion. Heart size is normal.",
    "Cardiomegaly. No pneumothorax.",
    "Small left pleural effusion.",
    "yes",
]


class EchoModel(torch.nn.Module):
    """Writes a fixed report, and answers 'Yes.' when the prompt is a question."""

    calls: list = []

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.scale = torch.nn.Parameter(torch.ones(1))

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.report)

    def generate(self, images, prompts, **kwargs):
        EchoModel.calls.append({"batch": images.shape[0], "device": images.device.type, "kwargs": kwargs})
        return ["Yes." if p.endswith("?") else self.text for p in prompts]


class TinyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return len(CAPTIONS)

    def __getitem__(self, i):
        sample = {"image": torch.full((3, 8, 8), float(i)), "prompt": "Describe the image.",
                  "caption": CAPTIONS[i], "image_id": f"img{i}", "question": None}
        if i == 4:
            sample.update(prompt="Is the heart enlarged?", question="Is the heart enlarged?")
        return sample


class TinyBuilder:
    DATASET_CONFIG_DICT: dict = {}

    def __init__(self, cfg):
        self.cfg = cfg

    def build_datasets(self):
        return {"train": TinyDataset(), "test": TinyDataset()}


@pytest.fixture
def registered(tmp_path):
    defaults = tmp_path / "tiny_defaults.yaml"
    defaults.write_text("datasets:\n  evalm_tiny:\n    data_type: images\n")
    TinyBuilder.DATASET_CONFIG_DICT = {"default": str(defaults)}
    registry.register_model("evalm_echo")(EchoModel)
    registry.register_builder("evalm_tiny")(TinyBuilder)
    EchoModel.calls = []
    yield
    registry.unregister("model", "evalm_echo")
    registry.unregister("builder", "evalm_tiny")


def _config(tmp_path, body: str):
    path = tmp_path / "eval.yaml"
    path.write_text(body)
    return str(path)


CONFIG = """
model:
  arch: evalm_echo
  report: "No pleural effusion. Heart size is normal."
datasets:
  evalm_tiny: {}
run:
  task: image_text_pretrain
  device: cpu
  batch_size_eval: 2
"""


def test_evaluate_decodes_with_the_generation_section_and_flags_win(registered, tmp_path):
    config = _config(tmp_path, CONFIG + "generation:\n  max_new_tokens: 7\n  repetition_penalty: 1.3\n")
    assert evaluate.main(["--cfg-path", config, "--out", str(tmp_path / "a"), "--java", "off", "--no-meteor"]) == 0
    assert EchoModel.calls[0]["kwargs"] == {"max_new_tokens": 7, "num_beams": 1, "do_sample": False,
                                            "repetition_penalty": 1.3}
    EchoModel.calls = []
    assert evaluate.main(["--cfg-path", config, "--out", str(tmp_path / "b"), "--java", "off", "--no-meteor",
                          "--max-new-tokens", "5"]) == 0
    assert EchoModel.calls[0]["kwargs"]["max_new_tokens"] == 5
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["settings"]["generation"]["max_new_tokens"] == 5


def test_evaluate_writes_metrics_and_samples(registered, tmp_path, capsys):
    out = tmp_path / "eval_out"
    code = evaluate.main(["--cfg-path", _config(tmp_path, CONFIG), "--out", str(out), "--java", "off",
                          "--max-new-tokens", "40", "--num-beams", "2"])
    assert code == 0
    assert [c["batch"] for c in EchoModel.calls] == [2, 2, 1]
    # The flags over the config's generation section (greedy; beam search brings its length penalty).
    assert EchoModel.calls[0]["kwargs"] == {"max_new_tokens": 40, "num_beams": 2, "do_sample": False,
                                            "repetition_penalty": 1.0, "length_penalty": 1.0}

    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [f"img{i}" for i in range(5)]
    assert [r["reference"] for r in rows] == CAPTIONS
    assert rows[0]["prediction"] == "No pleural effusion. Heart size is normal."
    assert rows[0]["labels_pred"]["Pleural Effusion"] == 0 and rows[0]["labels_ref"]["Pleural Effusion"] == 1
    assert rows[1]["metrics"]["BLEU-1"] == pytest.approx(1.0, abs=1e-6)  # identical report
    assert rows[4]["kind"] == "vqa" and rows[4]["metrics"] == {"VQA_closed": 1.0}

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["report"]["n"] == 4 and metrics["vqa"]["closed_accuracy"] == 1.0
    pe = metrics["report"]["clinical_efficacy"]["per_observation"]["Pleural Effusion"]
    assert (pe["tp"], pe["fn"], pe["tn"]) == (0, 2, 2)  # the echo report always denies an effusion
    assert metrics["report"]["tokenizer"] == "regex-fallback" and metrics["summary"]["METEOR"] is None
    assert metrics["settings"]["splits"] == ["test"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    printed = capsys.readouterr().out
    assert "BLEU-4" in printed and "clinical efficacy micro" in printed and "metrics.json" in printed


def test_limit_and_split_flags(registered, tmp_path):
    out = tmp_path / "o"
    evaluate.main(["--cfg-path", _config(tmp_path, CONFIG), "--out", str(out), "--java", "off",
                   "--splits", "train", "--limit", "3", "--batch-size", "3"])
    assert [c["batch"] for c in EchoModel.calls] == [3]
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads(rows[0])["split"] == "train"


def test_missing_split_and_missing_datasets_are_config_errors(registered, tmp_path):
    with pytest.raises(ConfigError, match="has split"):
        evaluate.main(["--cfg-path", _config(tmp_path, CONFIG), "--splits", "val", "--java", "off",
                       "--out", str(tmp_path / "x")])
    no_data = CONFIG.replace("datasets:\n  evalm_tiny: {}\n", "")
    with pytest.raises(ConfigError, match="lists no datasets"):
        evaluate.main(["--cfg-path", _config(tmp_path, no_data), "--out", str(tmp_path / "y")])


def test_end_to_end_with_tiny_model_and_medvqa_builder(tmp_path, seed_reference_dir):
    """The real registered model (random tiny miniature) and the real builder, greedy decoding."""
    from PIL import Image

    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    entries = []
    for i, caption in enumerate(CAPTIONS[:3]):
        pixels = (torch.rand(48, 40, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(data / "image" / f"x{i}.png")
        entries.append({"image": f"image/x{i}.png", "prompt": "Describe this chest x-ray.", "caption": caption})
    (data / "filter_cap.json").write_text(json.dumps(entries))
    (data / "filter_cap_test.json").write_text(json.dumps(entries))
    config = f"""
model:
  arch: mini_gpt4
  model_type: tiny
  tokenizer: {seed_reference_dir / "tokenizer"}
datasets:
  medvqa:
    build_info: {{storage: {data}}}
run:
  task: image_text_pretrain
  device: cpu
  batch_size_eval: 2
"""
    out = tmp_path / "out"
    code = evaluate.main(["--cfg-path", _config(tmp_path, config), "--out", str(out), "--java", "off",
                          "--max-new-tokens", "4"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == ["x0", "x1", "x2"]
    assert all(r["split"] == "test" and r["dataset"] == "medvqa" for r in rows)
    assert [r["reference"] for r in rows] == CAPTIONS[:3]
    assert all(isinstance(r["prediction"], str) and r["kind"] == "report" for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["report"]["n"] == 3 and metrics["skipped_samples"] == 0
    assert set(metrics["summary"]) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "CE_micro_f1"}
