"""Stage 1 of the embedded default: the image path learns finding labels, and stage 2 loads it as real checkpoints."""
import dataclasses
import json

import pytest
import torch

from tests.conftest import REPO_ROOT

from xraygpt.common.schema import PretrainSection
from xraygpt.tasks import encoder_pretraining as enc

CONFIG = str(REPO_ROOT / "train_configs" / "phantom_tiny.yaml")
SMALL_IMAGE_PATH = [
    "model.image_size=32", "model.vision_config.patch_size=8", "model.vision_config.width=32",
    "model.vision_config.depth=1", "model.qformer_config.hidden_size=32", "model.qformer_config.intermediate_size=64",
    "model.qformer_config.num_hidden_layers=1", "model.num_query_token=4",
    "model.llama_config.hidden_size=32", "model.llama_config.intermediate_size=64",
    "datasets.phantoms.vis_processor.train.image_size=32", "datasets.phantoms.vis_processor.eval.image_size=32",
]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from xraygpt.datasets import phantoms
    from xraygpt.tasks.tokenizer_training import texts_from_annotations, train_sentencepiece

    folder = tmp_path_factory.mktemp("phantoms")
    assert phantoms.main(["--out", str(folder), "--n", "40", "--seed", "3", "--size", "64"]) == 0
    train_sentencepiece(texts_from_annotations([folder / "filter_cap.json"]), folder / "tokenizer.model", 400)
    return folder


def _config(phantom_dir, tmp_path, *extra):
    from xraygpt.common.config import Config

    return Config({"cfg_path": CONFIG, "options": [
        f"datasets.phantoms.build_info.storage={phantom_dir}", f"model.tokenizer={phantom_dir}/tokenizer.model",
        f"model.vit_path={tmp_path}/pretrained/eva.pth", f"model.q_former_model={tmp_path}/pretrained/blip2.pth",
        f"run.output_dir={tmp_path}", *SMALL_IMAGE_PATH, *extra]})


def test_finding_f1_counts():
    logits = torch.tensor([[1.0, -1, 1, -1, -1], [1, 1, -1, -1, -1], [-1, -1, -1, -1, -1]])
    labels = torch.tensor([[1.0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 0, 0, 0]])
    scores = enc.finding_f1(logits, labels)
    # tp: Cardiomegaly 2, Effusion 1; fp: Pneumothorax 1; fn: Effusion 1 -> micro 2*3 / (2*3 + 2)
    assert scores["micro_f1"] == pytest.approx(0.75)
    assert scores["Cardiomegaly"] == 1.0 and scores["Pleural Effusion"] == pytest.approx(2 / 3)
    assert scores["Pneumothorax"] == 0.0 and scores["Lung Lesion"] == 0.0


def test_the_image_path_learns_labels_it_can_see(phantom_dir, tmp_path):
    """Labels = which image quadrant is bright: after a short run the held-out F1 is near perfect."""
    cfg = _config(phantom_dir, tmp_path)
    generator = torch.Generator().manual_seed(0)

    def quadrant_set(n):
        images = torch.randn(n, 3, 32, 32, generator=generator) * 0.3
        labels = (torch.rand(n, 4, generator=generator) < 0.4).float()
        for k, (y, x) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
            images[:, :, y:y + 16, x:x + 16] += 1.5 * labels[:, k, None, None, None]
        return enc.LabelledImages(images, labels)

    torch.manual_seed(0)
    model = enc.build_untrained_model(cfg.model_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("llama_model.")}
    probe = enc.pretrain_image_path(model, quadrant_set(256), PretrainSection(steps=120, lr=3e-3, batch_size=32))
    held_out = quadrant_set(128)
    predicted = probe.predict(held_out.images) > 0
    truth = held_out.labels.bool()
    f1 = 2 * (predicted & truth).sum() / (2 * (predicted & truth).sum() + (predicted ^ truth).sum())
    assert f1 > 0.9, f1
    # only the image path learned: the language model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_stage_one_files_are_original_formats_that_stage_two_loads(phantom_dir, tmp_path):
    from xraygpt.models.mini_gpt4 import MiniGPT4

    cfg = _config(phantom_dir, tmp_path, "pretrain.steps=3", "pretrain.batch_size=4", "run.seed=5")
    summary = enc.run_encoder_pretraining(cfg)  # settings from the config's pretrain section
    assert set(summary["validation"]) == {"micro_f1", *enc.FINDINGS}
    written = json.loads((tmp_path / "pretrained" / "encoder_pretraining.json").read_text())
    assert written["validation"] == summary["validation"]
    assert written["settings"] == {**dataclasses.asdict(PretrainSection(steps=3, batch_size=4)), "seed": 5, "device": "cpu"}

    eva = torch.load(tmp_path / "pretrained" / "eva.pth", weights_only=True)
    blip2 = torch.load(tmp_path / "pretrained" / "blip2.pth", weights_only=True)["model"]
    assert "blocks.0.attn.qkv.weight" in eva and "patch_embed.proj.weight" in eva  # EVA names
    assert {"query_tokens", "ln_vision.weight"} <= set(blip2)
    assert any(k.startswith("Qformer.bert.encoder.layer.0.crossattention.") for k in blip2)  # LAVIS names

    # Stage 2 builds the model from the config: the encoder comes from the files, frozen, and it
    # matches the stage-1 weights exactly (its parameters differ from a fresh random init).
    stage2 = MiniGPT4.from_config(cfg.model_cfg).eval()
    assert not any(p.requires_grad for p in stage2.qformer.parameters())
    assert not any(p.requires_grad for p in stage2.visual_encoder.parameters())
    torch.manual_seed(123)
    fresh = enc.build_untrained_model(cfg.model_cfg)
    ours = stage2.state_dict()
    assert torch.equal(ours["query_tokens"], blip2["query_tokens"])
    assert torch.equal(ours["ln_vision.weight"], blip2["ln_vision.weight"])
    assert torch.equal(ours["visual_encoder.vit.embeddings.patch_embedding.weight"], eva["patch_embed.proj.weight"])
    assert not torch.equal(ours["query_tokens"], fresh.state_dict()["query_tokens"])


def test_stage_one_needs_target_paths_and_labels(phantom_dir, tmp_path):
    with pytest.raises(ValueError, match="model.vit_path and model.q_former_model"):
        enc.run_encoder_pretraining(_config(phantom_dir, tmp_path, "model.vit_path=null"))
    with pytest.raises(FileNotFoundError, match="labels.json"):
        enc.run_encoder_pretraining(_config(phantom_dir, tmp_path), labels_file=tmp_path / "labels.json")
    assert not (tmp_path / "pretrained").exists()  # nothing half-written


def test_quickstart_runs_both_stages_and_scores(tmp_path, capsys):
    """The README's first command, shrunk: data, tokenizer, stage 1, stage 2 (cached features), evaluation."""
    from xraygpt.quickstart import main

    data = tmp_path / "phantoms"
    options = [
        f"datasets.phantoms.build_info.storage={data}", f"model.tokenizer={data}/tokenizer.model",
        f"model.vit_path={data}/pretrained/eva.pth", f"model.q_former_model={data}/pretrained/blip2.pth",
        f"run.output_dir={tmp_path}/out", f"run.cache_dir={tmp_path}/cache", *SMALL_IMAGE_PATH,
        "run.batch_size_train=8", "run.batch_size_eval=16", "run.max_epoch=1", "run.iters_per_epoch=2",
        "run.warmup_steps=1", "run.valid_max_new_tokens=6",
    ]
    argv = ["--phantoms", "40", "--phantom-size", "64", "--vocab-size", "400", "--encoder-steps", "4", "--no-meteor",
            "--options", *options]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "finding-level F1" in first and "ground truth:" in first
    assert (data / "pretrained" / "encoder_pretraining.json").is_file()
    metrics = json.loads((tmp_path / "out" / "quickstart" / "quickstart_metrics.json").read_text())
    assert "CE_micro_f1" in metrics and "BLEU-1" in metrics
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("CE_micro_f1", "BLEU-1"))
    assert list((tmp_path / "cache").rglob("*.safetensors")), "stage 2 trains from cached Q-Former features"

    # A second run reuses data, tokenizer and encoder files (stage 1 is not repeated).
    stamp = (data / "pretrained" / "eva.pth").stat().st_mtime_ns
    assert main(argv + ["run.job_id=again"]) == 0
    assert (data / "pretrained" / "eva.pth").stat().st_mtime_ns == stamp
