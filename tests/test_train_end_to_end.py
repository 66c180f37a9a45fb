"""The real model and data through train.py: phantom data, SentencePiece tokenizer, training, generation, cache."""
import json

import pytest

from tests.conftest import REPO_ROOT
from tests.train_support import train_in_process

from xraygpt.datasets import phantoms

CONFIG = str(REPO_ROOT / "train_configs" / "phantom_tiny.yaml")
TINY = [
    # The phantom_tiny architecture, shrunk further so a few steps take seconds.
    "model.image_size=32", "model.vision_config.patch_size=8", "model.vision_config.width=32",
    "model.vision_config.depth=1", "model.qformer_config.hidden_size=32", "model.qformer_config.intermediate_size=64",
    "model.llama_config.hidden_size=32", "model.llama_config.intermediate_size=64", "model.num_query_token=4",
    "datasets.phantoms.vis_processor.train.image_size=32", "datasets.phantoms.vis_processor.eval.image_size=32",
    "run.batch_size_train=4", "run.batch_size_eval=8", "run.max_epoch=1", "run.iters_per_epoch=3",
    "run.num_workers=0", "run.log_freq=1", "run.warmup_steps=1",
    # random-init encoders: stage 1 (tests/test_encoder_pretraining.py) is not needed to test stage 2's mechanics
    "model.vit_path=null", "model.q_former_model=null",
]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from xraygpt.tasks.tokenizer_training import texts_from_annotations, train_sentencepiece

    folder = tmp_path_factory.mktemp("phantoms")
    phantoms.main(["--out", str(folder), "--n", "30", "--seed", "1"])
    train_sentencepiece(texts_from_annotations([folder / "filter_cap.json"]), folder / "tokenizer.model", 400)
    return folder


def _options(phantom_dir, tmp_path, job, *extra):
    return [f"datasets.phantoms.build_info.storage={phantom_dir}", f"model.tokenizer={phantom_dir}/tokenizer.model",
            f"run.output_dir={tmp_path}", f"run.job_id={job}", f"run.cache_dir={tmp_path}/cache", *TINY, *extra]


def _losses(job_dir, kind="train"):
    rows = [json.loads(line) for line in (job_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == kind}


def test_phantom_training_then_generation_and_scores(phantom_dir, tmp_path):
    from xraygpt.common.config import Config
    from xraygpt.quickstart import evaluate

    options = _options(phantom_dir, tmp_path, "e2e", "run.valid_generate=4", "run.valid_max_new_tokens=6")
    state = train_in_process(CONFIG, *options)
    assert state["global_step"] == 3 and state["best_checkpoint"] == "step_00000003"
    job = tmp_path / "e2e"
    losses = _losses(job)
    assert sorted(losses) == [1, 2, 3] and all(v > 0 for v in losses.values())
    assert losses[3] < losses[1], losses  # three steps at lr 2e-3 already lower the report loss
    valid = [json.loads(line) for line in (job / "log.jsonl").read_text().splitlines() if '"valid"' in line]
    assert valid[0]["loss"] > 0 and "BLEU-1" in valid[0]  # generation metrics of 4 valid samples
    cfg = Config({"cfg_path": CONFIG, "options": options + ["run.valid_max_new_tokens=8"]})
    assert (job / "model_best.safetensors").read_bytes() == (
        job / "checkpoints" / "step_00000003" / "model.safetensors").read_bytes()
    result = evaluate(cfg, job / "model_best.safetensors", "test", 8, meteor=False, bootstrap=0)
    records = result["records"]
    test_entries = json.loads((phantom_dir / "filter_cap_test.json").read_text())
    assert len(records) == len(test_entries) and all(isinstance(r["prediction"], str) for r in records)
    assert sum(bool(r["question"]) for r in records) == sum(e["task"] == "vqa" for e in test_entries)
    summary = result["scores"]["summary"]
    assert "CE_micro_f1" in summary and "VQA_closed_accuracy" in summary
    assert 0.0 <= summary["CE_micro_f1"] <= 1.0 and 0.0 <= summary["VQA_closed_accuracy"] <= 1.0


def test_feature_cache_matches_image_training_with_the_real_model(phantom_dir, tmp_path):
    frozen = ["model.freeze_vit=true", "model.freeze_qformer=true", "run.valid_splits=[]"]
    train_in_process(CONFIG, *_options(phantom_dir, tmp_path, "plain", *frozen, "run.cache_visual_features=false"))
    train_in_process(CONFIG, *_options(
        phantom_dir, tmp_path, "cached", *frozen, "run.cache_visual_features=true"))
    plain, cached = _losses(tmp_path / "plain"), _losses(tmp_path / "cached")
    assert plain.keys() == cached.keys() == {1, 2, 3}
    for step in plain:
        assert cached[step] == pytest.approx(plain[step], abs=1e-5)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) > 0


def test_original_finetune_config_validates(repo_root):
    """train_configs/xraygpt_openi_finetune.yaml parses and validates unchanged (weights need not exist)."""
    from xraygpt.common.config import Config

    path = repo_root / "train_configs" / "xraygpt_openi_finetune.yaml"
    cfg = Config({"cfg_path": str(path), "options": []})
    run = cfg.run_cfg
    assert run.task == "image_text_pretrain" and run.runner == "runner_base"
    from xraygpt.common.registry import registry

    registry.get_task_class(run.task)
    registry.get_lr_scheduler_class(run.lr_sched)
    registry.get_runner_class(run.runner)
