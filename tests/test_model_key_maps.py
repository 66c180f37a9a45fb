"""Key maps between original checkpoints and our modules; position-embedding resizing; shipped YAMLs."""
import logging

import pytest
import torch
import yaml

from xraygpt.common.config import Config, default_dataset_config_path
from xraygpt.models import key_maps
from xraygpt.models.model_config import model_config_from
from xraygpt.models.vision_encoders import EvaViTG, EvaViTSettings, resize_position_embedding

TINY_EVA = EvaViTSettings(width=64, depth=2, num_heads=4, mlp_ratio=4.3637, patch_size=14)


def _equal_dicts(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_eva_round_trip_lavis_ours_lavis(seed_reference_dir):
    lavis = torch.load(seed_reference_dir / "eva_vit.pth", weights_only=True)
    ours, dropped = key_maps.eva_to_ours(lavis, depth=2)
    assert not dropped
    bias = ours["encoder.layers.0.self_attn.qkv.bias"]
    assert torch.equal(bias[:64], lavis["blocks.0.attn.q_bias"]) and not bias[64:128].any()
    assert torch.equal(bias[128:], lavis["blocks.0.attn.v_bias"])
    _equal_dicts(key_maps.ours_to_eva(ours), lavis)
    # every converted name exists in the transformers module, and nothing is left out
    encoder = EvaViTG(TINY_EVA, image_size=224)
    assert sorted(f"vit.{k}" for k in ours) == sorted(encoder.state_dict())


def test_eva_blocks_beyond_depth_are_dropped_and_counted(seed_reference_dir, caplog):
    lavis = torch.load(seed_reference_dir / "eva_vit.pth", weights_only=True)
    encoder = EvaViTG(EvaViTSettings(width=64, depth=1, num_heads=4, mlp_ratio=4.3637), image_size=224)
    with caplog.at_level(logging.INFO):
        encoder.load_original(lavis, source="eva_vit.pth")
    assert "ignored 13 tensors of blocks beyond depth 1" in caplog.text
    assert torch.equal(encoder.vit.encoder.layers[0].mlp.fc1.weight, lavis["blocks.0.mlp.fc1.weight"])


def test_eva_unknown_key_raises(seed_reference_dir):
    lavis = torch.load(seed_reference_dir / "eva_vit.pth", weights_only=True)
    lavis["blocks.0.attn.relative_position_bias_table"] = torch.zeros(3)
    with pytest.raises(key_maps.KeyMapError, match="unknown keys blocks.0.attn.relative_position_bias_table"):
        key_maps.eva_to_ours(lavis, depth=2)
    del lavis["blocks.0.attn.relative_position_bias_table"]
    del lavis["blocks.1.attn.v_bias"]
    with pytest.raises(key_maps.KeyMapError, match="block 1 has only"):
        key_maps.eva_to_ours(lavis, depth=2)


def test_qformer_round_trip_and_text_only_weights_dropped(seed_reference_dir):
    lavis = torch.load(seed_reference_dir / "blip2_qformer.pth", weights_only=True)["model"]
    full = dict(lavis)
    full["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(128, 64)
    full["Qformer.bert.encoder.layer.1.output.LayerNorm.bias"] = torch.zeros(64)
    full["Qformer.bert.embeddings.word_embeddings.weight"] = torch.zeros(10, 64)
    full["Qformer.cls.predictions.bias"] = torch.zeros(10)
    full["vision_proj.weight"] = torch.zeros(4, 64)
    ours, dropped = key_maps.qformer_to_ours(full)
    assert dropped["text-only Q-Former weights (MiniGPT-4 discards them)"] == 4
    assert dropped["Q-Former position-id buffers"] == 1 and dropped["BLIP-2 heads unused by MiniGPT-4"] == 1
    assert "qformer.encoder.layer.0.crossattention.attention.key.weight" in ours
    assert "qformer.layernorm.weight" in ours and "query_tokens" in ours and "ln_vision.bias" in ours
    expected = {k: v for k, v in lavis.items() if k != "Qformer.bert.embeddings.position_ids"}
    _equal_dicts(key_maps.ours_to_qformer(ours), expected)
    with pytest.raises(key_maps.KeyMapError, match="Qformer.bert.pooler.dense.weight"):
        key_maps.qformer_to_ours({**lavis, "Qformer.bert.pooler.dense.weight": torch.zeros(1)})


def test_swin_names_round_trip():
    old = "encoder.layers.0.blocks.1.attention.output.dense.weight"
    assert key_maps.swin_v4_to_v5(old) == "encoder.layers.0.blocks.1.attention.o_proj.weight"
    assert key_maps.swin_v5_to_v4(key_maps.swin_v4_to_v5(old)) == old
    ffn = "encoder.layers.0.blocks.1.output.dense.bias"
    assert key_maps.swin_v5_to_v4(key_maps.swin_v4_to_v5(ffn)) == ffn
    with pytest.raises(key_maps.KeyMapError, match="vision_model.model"):
        key_maps.medclip_to_ours({"model.encoder.x": torch.zeros(1)}, new_swin_names=True)


def test_position_embedding_resize():
    pos = torch.randn(1, 257, 8)
    assert resize_position_embedding(pos, 256) is pos
    bigger = resize_position_embedding(pos, 24 * 24)
    assert bigger.shape == (1, 577, 8) and torch.equal(bigger[:, :1], pos[:, :1])
    # the original's formula: plain bicubic interpolation of the 16x16 grid (timm's resampler does exactly this)
    grid = pos[:, 1:].reshape(1, 16, 16, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False)
    assert torch.equal(bigger[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 576, 8))
    constant = torch.ones(1, 257, 8) * 3.0
    assert torch.allclose(resize_position_embedding(constant, 24 * 24), torch.full((1, 577, 8), 3.0), atol=1e-5)
    # a smooth ramp stays a ramp: each row of the grid is still increasing left to right
    ramp = torch.arange(16.0).repeat(16).view(1, 256, 1)
    resized = resize_position_embedding(torch.cat([torch.zeros(1, 1, 1), ramp], 1), 32 * 32)[0, 1:, 0].view(32, 32)
    assert bool((resized[:, 1:] > resized[:, :-1]).all())


def test_eva_checkpoint_drives_other_image_size(seed_reference_dir):
    lavis = torch.load(seed_reference_dir / "eva_vit.pth", weights_only=True)
    encoder = EvaViTG(TINY_EVA, image_size=336)
    encoder.load_original(lavis, source="eva_vit.pth")
    expected = resize_position_embedding(lavis["pos_embed"], 24 * 24)
    assert torch.equal(encoder.vit.embeddings.position_embedding, expected)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 336, 336)).shape == (1, 577, 64)


SHIPPED = [
    "train_configs/xraygpt_openi_finetune.yaml",
    "train_configs/xraygpt_mimic_pretrain.yaml",
    "eval_configs/xraygpt_eval.yaml",
    "eval_configs/seed_reference_tiny.yaml",
    "tests/configs/model_tiny.yaml",
    "tests/configs/model_tiny_medclip.yaml",
]


@pytest.mark.parametrize("relative", SHIPPED)
def test_shipped_configs_validate(repo_root, tmp_path, relative):
    """run: against the typed schema, model: against ours (datasets layered once their defaults exist)."""
    path = repo_root / relative
    data = yaml.safe_load(path.read_text())
    if any(not default_dataset_config_path(name).is_file() for name in data.get("datasets", {})):
        data.pop("datasets")
        path = tmp_path / path.name
        path.write_text(yaml.safe_dump(data).replace("../fixtures", str(repo_root / "tests" / "fixtures")).replace("${cfg_dir:}/../tests", str(repo_root / "tests")))
    cfg = Config({"cfg_path": str(path)})
    model_cfg = model_config_from(cfg.model_cfg)
    assert model_cfg.prompt_template == "###Patient: {} ###Doctor: " and model_cfg.end_sym == "###"
    if relative.startswith(("train_configs", "eval_configs/xraygpt")):
        assert model_cfg.num_query_token == 32 and model_cfg.max_txt_len == 160
        assert model_cfg.vit_path == "weights/eva_vit_g.pth" and model_cfg.q_former_model.startswith("weights/")
        assert cfg.run_cfg.seed == 42 and cfg.run_cfg.task == "image_text_pretrain"
