"""Evaluation outputs (CIs, table, ReXrank JSON, figure), ``compare`` and the learned-metric adapters."""
from __future__ import annotations

import csv
import json
import sys
import types

import pytest

from tests.test_eval_cli import CAPTIONS, CONFIG, _config, registered  # noqa: F401  (fixture)
from xraygpt import evaluate
from xraygpt.common.errors import DataError
from xraygpt.evaluation.learned_metrics import learned_scores

OTHER_REPORT = "There is a small right pleural effusion. Cardiomegaly."


def _run(tmp_path, name, report=None, extra=(), config_tail=""):
    body = CONFIG if report is None else CONFIG.replace("No pleural effusion. Heart size is normal.", report)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(body + config_tail)
    out = tmp_path / name
    assert evaluate.main(["--cfg-path", str(cfg), "--out", str(out), "--java", "off", "--bootstrap", "200",
                          *extra]) == 0
    return out


def test_outputs_carry_intervals_table_rexrank_and_figure(registered, tmp_path, capsys):
    out = _run(tmp_path, "a")
    metrics = json.loads((out / "metrics.json").read_text())
    ci = metrics["confidence_intervals"]
    assert ci["resamples"] == 200 and ci["level"] == 0.95 and ci["n_studies"] == 5
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "CE_micro_f1", "CE_macro_f1", "CE_f1/Pleural Effusion",
                 "VQA_closed_accuracy"):
        entry = ci["metrics"][name]
        assert entry["low"] <= entry["value"] <= entry["high"], name
        if name in metrics["summary"]:
            assert entry["value"] == pytest.approx(metrics["summary"][name]), name
    printed = capsys.readouterr().out
    assert "[low, high]: 95% percentile bootstrap over studies (200 resamples, seed 0, 5 studies)" in printed
    assert f"BLEU-1 {metrics['summary']['BLEU-1']:.4f} [" in printed

    with open(out / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["reference"] for r in rows] == CAPTIONS
    assert rows[0]["ref/Pleural Effusion"] == "1" and rows[0]["gen/Pleural Effusion"] == "0"
    assert float(rows[1]["BLEU-1"]) == pytest.approx(1.0, abs=1e-6) and rows[4]["VQA_closed"] == "1.0"
    rexrank = json.loads((out / "rexrank.json").read_text())
    assert rexrank == {f"img{i}": {"model_prediction": "No pleural effusion. Heart size is normal."} for i in range(4)}
    png = (out / "clinical_efficacy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_no_bootstrap_and_no_figure_flags(registered, tmp_path):
    cfg = _config(tmp_path, CONFIG)
    out = tmp_path / "plain"
    assert evaluate.main(["--cfg-path", cfg, "--out", str(out), "--java", "off", "--bootstrap", "0", "--no-figure"]) == 0
    assert "confidence_intervals" not in json.loads((out / "metrics.json").read_text())
    assert not (out / "clinical_efficacy.png").exists()


def test_compare_reproduces_each_runs_metrics_and_their_difference(registered, tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", OTHER_REPORT)
    capsys.readouterr()
    assert evaluate.main(["compare", str(a), str(b), "--permutations", "300", "--resamples", "200",
                          "--json", str(tmp_path / "cmp.json")]) == 0
    printed = capsys.readouterr().out
    assert "approximate-randomisation p (300 permutations" in printed and "CE_f1/Pleural Effusion" in printed
    result = json.loads((tmp_path / "cmp.json").read_text())["metrics"]
    sa = json.loads((a / "metrics.json").read_text())["summary"]
    sb = json.loads((b / "metrics.json").read_text())["summary"]
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "CE_micro_f1", "CE_macro_f1", "VQA_closed_accuracy"):
        assert result[name]["a"] == pytest.approx(sa[name]) and result[name]["b"] == pytest.approx(sb[name]), name
        assert result[name]["diff"] == pytest.approx(sa[name] - sb[name]), name
        assert 0 < result[name]["p_value"] <= 1
    # The echo report of A never finds the effusions the references have; B finds them.
    assert result["CE_f1/Pleural Effusion"]["a"] == 0 and result["CE_f1/Pleural Effusion"]["diff"] < 0


def test_compare_identical_runs_gives_p_one(registered, tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    result = evaluate.main(["compare", str(a), str(b), "--permutations", "200", "--json", str(tmp_path / "c.json")])
    assert result == 0
    metrics = json.loads((tmp_path / "c.json").read_text())["metrics"]
    for name, m in metrics.items():
        if m["diff"] is not None:
            assert m["diff"] == 0 and m["p_value"] == 1.0 and m["low"] == m["high"] == 0, name


def test_compare_refuses_runs_over_different_samples(registered, tmp_path, capsys):
    a = _run(tmp_path, "a")
    b = _run(tmp_path, "b", extra=("--limit", "3"))
    capsys.readouterr()
    with pytest.raises(DataError, match=r"were scored on different test samples \(5 vs 3 samples, 3 in common\)"):
        evaluate.main(["compare", str(a), str(b)])
    from xraygpt.common.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main(["compare", str(a), str(b)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "different test samples" in err and "Traceback" not in err


def test_compare_of_a_folder_without_samples_is_one_line(tmp_path):
    with pytest.raises(DataError, match="samples.jsonl not found: pass the output folder"):
        evaluate.main(["compare", str(tmp_path), str(tmp_path)])


# ------------------------------------------------------------------ learned metrics (no real packages)
class _FakeF1CheXbert:
    calls: list = []

    def __init__(self, device="cpu"):
        import os

        _FakeF1CheXbert.calls.append({"device": device, "offline": os.environ.get("HF_HUB_OFFLINE")})

    def __call__(self, hyps, refs):
        _FakeF1CheXbert.calls[-1].update(hyps=hyps, refs=refs)
        return 0.5, [0.5], {"micro avg": {"f1-score": 0.25}}, {"micro avg": {"f1-score": 0.75}}


@pytest.fixture
def fake_f1chexbert(monkeypatch):
    module = types.ModuleType("f1chexbert")
    module.F1CheXbert = _FakeF1CheXbert
    _FakeF1CheXbert.calls = []
    monkeypatch.setitem(sys.modules, "f1chexbert", module)
    for absent in ("RadEval", "radgraph"):
        monkeypatch.setitem(sys.modules, absent, None)  # import fails: never the real packages
    return module


def test_learned_metrics_error_paths(tmp_path, fake_f1chexbert, monkeypatch):
    scores, notes = learned_scores(["a"], ["b"], {})
    assert scores == {}
    assert notes[0] == "CheXbert F1 not computed: set evaluation.chexbert_path to the local model file " \
                       "(nothing is downloaded)"
    missing = tmp_path / "chexbert.pth"
    scores, notes = learned_scores(["a"], ["b"], {"chexbert_path": str(missing), "radgraph_path": str(tmp_path)})
    assert notes[0] == f"CheXbert F1 not computed: model file {missing} not found (evaluation.chexbert_path points to it)"
    assert notes[1] == "RadGraph F1 not computed: needs the RadEval or radgraph package, which is not installed"
    missing.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "f1chexbert", None)
    _, notes = learned_scores(["a"], ["b"], {"chexbert_path": str(missing)})
    assert notes[0] == "CheXbert F1 not computed: needs the f1chexbert or RadEval package, which is not installed"


def test_learned_metric_failure_is_one_note(tmp_path, fake_f1chexbert):
    def broken(self, hyps, refs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    fake_f1chexbert.F1CheXbert = type("Broken", (_FakeF1CheXbert,), {"__call__": broken})
    (tmp_path / "chexbert.pth").write_bytes(b"w")
    scores, notes = learned_scores(["a"], ["b"], {"chexbert_path": str(tmp_path / "chexbert.pth")})
    assert scores == {} and notes[0].startswith("CheXbert F1 not computed: f1chexbert failed with OSError: "
                                                "We couldn't connect to 'https://huggingface.co' (model file")


def test_learned_metrics_wired_into_the_evaluation(registered, tmp_path, fake_f1chexbert):
    (tmp_path / "chexbert.pth").write_bytes(b"w")
    tail = f"evaluation:\n  chexbert_path: {tmp_path / 'chexbert.pth'}\n"
    out = _run(tmp_path, "learned", config_tail=tail)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["CheXbert_F1_micro5"] == 0.75 and metrics["summary"]["CheXbert_F1_micro14"] == 0.25
    assert metrics["report"]["learned_metrics"] == {"CheXbert_F1_micro14": 0.25, "CheXbert_F1_micro5": 0.75}
    assert any("RadGraph F1 not computed: set evaluation.radgraph_path" in n for n in metrics["report"]["notes"])
    call = _FakeF1CheXbert.calls[-1]
    assert call["offline"] == "1" and call["refs"] == CAPTIONS[:4] and len(call["hyps"]) == 4
