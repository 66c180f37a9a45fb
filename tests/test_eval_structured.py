"""Per-field scores of structured reports, and ``xraygpt.evaluate --structured``."""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_eval_cli import CAPTIONS  # four reports (right/no/left effusion, cardiomegaly) and a VQA "yes"
from xraygpt import evaluate
from xraygpt.common.registry import registry
from xraygpt.evaluation.structured_scores import score_structured
from xraygpt.structured import extract_report, schema_errors

GEN = {"mode": "extract", "model": "t", "checkpoint_sha256": None, "settings": {}}
ECHO = "There is a small right pleural effusion. Heart size is normal."


def _scores(predictions, references):
    return score_structured([extract_report(p, GEN) for p in predictions], [extract_report(r, GEN) for r in references])


def test_scores_by_hand():
    result = _scores([ECHO] * 4, CAPTIONS[:4])
    status = result["status"]["per_observation"]
    assert status == {"Cardiomegaly": {"accuracy": 0.5, "n": 2}, "Pleural Effusion": {"accuracy": 2 / 3, "n": 3},
                      "Pneumothorax": {"accuracy": 0.0, "n": 1}}
    assert result["status"]["micro"] == 0.5 and result["status"]["macro"] == pytest.approx((2 / 3 + 0.5) / 3)
    assert (result["laterality"]["micro"], result["laterality"]["n"]) == (0.5, 2)   # right = right, right != left
    assert (result["severity"]["micro"], result["severity"]["n"]) == (0.5, 2)       # small != large, small = Small
    assert (result["location"]["micro"], result["location"]["n"]) == (None, 0)
    assert result["no_finding"] == {"accuracy": 0.75, "n": 4}
    assert result["per_sample"][2] == {"status_correct": 0, "status_n": 2}


def test_identical_reports_score_one_and_lengths_must_match():
    result = _scores(CAPTIONS[:4], CAPTIONS[:4])
    assert result["status"]["micro"] == result["laterality"]["micro"] == result["severity"]["micro"] == 1.0
    with pytest.raises(ValueError, match="2 predicted but 1 reference"):
        score_structured([extract_report("", GEN)] * 2, [extract_report("", GEN)])


class _Echo(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    @classmethod
    def from_config(cls, cfg):
        return cls()

    def generate(self, images, prompts, **kwargs):
        return ["Yes." if p.endswith("?") else ECHO for p in prompts]


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return len(CAPTIONS)

    def __getitem__(self, i):
        question = "Is the heart enlarged?" if i == 4 else None
        return {"image": torch.zeros(3, 8, 8), "prompt": question or "Describe the image.", "caption": CAPTIONS[i],
                "image_id": f"img{i}", "question": question}


class _Builder:
    DATASET_CONFIG_DICT: dict = {}

    def __init__(self, cfg):
        self.cfg = cfg

    def build_datasets(self):
        return {"test": _Data()}


def test_evaluate_cli_scores_structured_output(tmp_path, capsys):
    defaults = tmp_path / "d.yaml"
    defaults.write_text("datasets:\n  evals_tiny:\n    data_type: images\n")
    _Builder.DATASET_CONFIG_DICT = {"default": str(defaults)}
    registry.register_model("evals_echo")(_Echo)
    registry.register_builder("evals_tiny")(_Builder)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("model: {arch: evals_echo}\ndatasets: {evals_tiny: {}}\nrun: {task: image_text_pretrain, device: cpu}\n")
    try:
        assert evaluate.main(["--cfg-path", str(cfg), "--out", str(tmp_path / "o"), "--java", "off", "--structured"]) == 0
    finally:
        registry.unregister("model", "evals_echo")
        registry.unregister("builder", "evals_tiny")
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["structured"]["status"]["micro"] == 0.5 and metrics["summary"]["STRUCT_laterality_acc"] == 0.5
    assert metrics["summary"]["STRUCT_no_finding_acc"] == 0.75
    rows = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    assert all(schema_errors(r["structured"]) == [] for r in rows[:4]) and "structured" not in rows[4]
    assert rows[0]["structured"]["findings"][0]["laterality"] == "right"
    assert "structured: status macro 0.3889 micro 0.5000" in capsys.readouterr().out


def test_a_json_prediction_is_taken_as_it_is_and_prose_is_extracted():
    from xraygpt.structured.constrained import content_json
    from xraygpt.structured.reports import structured_of_prediction

    report = extract_report(CAPTIONS[3], GEN)
    as_json = structured_of_prediction(content_json(report), GEN)
    assert as_json == {**report, "generator": {**GEN, "mode": "constrained"}}
    assert structured_of_prediction(CAPTIONS[3], GEN) == report
    broken = structured_of_prediction('{"findings": [', GEN)  # not a document: read as prose (mentions nothing)
    assert broken["findings"] == [] and schema_errors(broken) == []
