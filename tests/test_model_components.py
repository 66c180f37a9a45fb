"""Tiny random models built from config: freezing, LoRA, checkpoints both ways, clear errors."""
import logging

import pytest
import torch

from xraygpt.common.config import Config, ConfigError
from xraygpt.common.registry import registry
from xraygpt.models.checkpoint_io import CheckpointError


def build(repo_root, *options, cfg="model_tiny.yaml"):
    config = Config({"cfg_path": str(repo_root / "tests" / "configs" / cfg), "options": list(options)})
    return registry.get_model_class("xraygpt").from_config(config.model_cfg)


def batch(n=2, size=224):
    return {
        "image": torch.randn(n, 3, size, size),
        "prompt": [" What are the findings?", "Describe the image."][:n],
        "caption": ["The heart size is normal.", "No pleural effusion or pneumothorax. Lungs are clear."][:n],
    }


def trainable(model):
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def test_tiny_model_from_llama_config_and_sentencepiece_file(repo_root):
    model = build(repo_root)
    assert model.llama_model.config.hidden_size == 32 and model.llama_model.config.vocab_size == len(model.tokenizer) == 1000
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id == 2
    assert model.encode_qformer(torch.randn(2, 3, 224, 224)).shape == (2, 4, 32)
    model.train()
    out = model(batch())
    out["loss"].backward()
    # only llama_proj trains by default, and only it receives gradients
    assert set(trainable(model)) == {"llama_proj.weight", "llama_proj.bias"}
    assert model.llama_proj.weight.grad is not None and model.query_tokens.grad is None
    assert not model.visual_encoder.training and not model.qformer.training and not model.llama_model.training


def test_frozen_parts_keep_no_graph_and_their_dtype(repo_root):
    model = build(repo_root, "model.vit_precision=bf16", "model.llm_dtype=bf16").train()
    images = torch.randn(2, 3, 224, 224)
    assert not model.encode_qformer(images).requires_grad  # frozen ViT + Q-Former: no activations kept
    assert model.encode_img(images)[0].requires_grad  # llama_proj trains
    assert {p.dtype for p in model.visual_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.llama_model.parameters()} == {torch.bfloat16}
    assert model.ln_vision.weight.dtype == model.llama_proj.weight.dtype == torch.float32
    loss = model(batch())["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.llama_proj.weight.grad.dtype == torch.float32


def test_freeze_flags_control_what_trains(repo_root):
    model = build(repo_root, "model.freeze_vit=false", "model.freeze_qformer=false", "model.freeze_llm=false")
    counts = trainable(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(counts.values()) == total
    model.train()
    assert model.visual_encoder.training and model.qformer.training and model.llama_model.training
    model(batch())["loss"].backward()
    qkv_bias = model.visual_encoder.vit.encoder.layers[0].self_attn.qkv.bias
    assert qkv_bias.grad[:32].abs().sum() > 0 and not qkv_bias.grad[32:64].any()  # EVA has no key bias
    model.eval()
    assert not model.qformer.training

    only_qformer = build(repo_root, "model.freeze_qformer=false")
    names = set(trainable(only_qformer))
    assert "query_tokens" in names and any(n.startswith("qformer.") for n in names)
    assert not any(n.startswith(("visual_encoder.", "ln_vision.", "llama_model.")) for n in names)


def test_lora_adds_exactly_the_adapter_parameters(repo_root):
    plain = build(repo_root)
    lora = build(repo_root, "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}")
    extra = {n: c for n, c in trainable(lora).items() if n not in trainable(plain)}
    # 2 layers x (q_proj, v_proj) x (A: r x 32 + B: 32 x r)
    assert sum(extra.values()) == 2 * 2 * (4 * 32 + 32 * 4)
    assert all("lora_" in n for n in extra)
    assert not any("lora_" in n for n in trainable(plain))
    loss = lora(batch())["loss"]
    loss.backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_B" in n)


def test_checkpoint_round_trip_safetensors_and_original_pth(repo_root, tmp_path):
    torch.manual_seed(1)
    source = build(repo_root, "model.freeze_qformer=false")
    source.save_checkpoint(tmp_path / "ckpt.safetensors", original_pth=tmp_path / "ckpt.pth")
    original = torch.load(tmp_path / "ckpt.pth", weights_only=True)["model"]
    assert "llama_proj.weight" in original and "query_tokens" in original
    assert any(k.startswith("Qformer.bert.encoder.layer.0.attention.self.") for k in original)

    for name in ("ckpt.safetensors", "ckpt.pth"):
        torch.manual_seed(2)
        target = build(repo_root, "model.freeze_qformer=false")
        assert not torch.equal(target.llama_proj.weight, source.llama_proj.weight)
        target.load_checkpoint(tmp_path / name)
        for key, value in source.trainable_state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (name, key)


def test_lora_checkpoint_needs_lora_config(repo_root, tmp_path):
    lora = build(repo_root, "model.lora={r: 2}")
    lora.save_checkpoint(tmp_path / "lora.safetensors")
    build(repo_root, "model.lora={r: 2}").load_checkpoint(tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="LoRA"):
        build(repo_root).load_checkpoint(tmp_path / "lora.safetensors")


@torch.no_grad()
def test_the_image_path_is_one_path(repo_root):
    """encode_qformer -> llama_proj -> image slots; encode_img and encode_features are views of that path."""
    model = build(repo_root).eval()
    images = torch.randn(2, 3, 224, 224)
    features = model.encode_qformer(images)
    assert torch.equal(model.encode_features(images), features)
    inputs_llama, atts = model.encode_img(images)
    assert torch.equal(inputs_llama, model.llama_proj(features))
    assert atts.tolist() == [[1] * 4] * 2
    with pytest.raises(ValueError, match=r"image_features must be \[B, 4, 32\]"):
        model.prepare_generation_inputs(None, ["Hi", "Hi"], image_features=features[:, :1])
    with pytest.raises(KeyError, match="samples need 'image'"):
        model.prepare_generation_inputs(None, ["Hi"])


def test_generate_with_full_context_equals_template(repo_root):
    model = build(repo_root).eval()
    images = torch.randn(2, 3, 224, 224)
    prompts = [" What are the findings?", "Hi"]
    _, ids = model.generate(images, prompts, max_new_tokens=5, stop_strings=[], return_ids=True)
    contexts = [model.config.prompt_template.format("<Img><ImageHere></Img>" + p) for p in prompts]
    _, ids2 = model.generate(images, contexts, apply_template=False, max_new_tokens=5, stop_strings=[], return_ids=True)
    assert [i.tolist() for i in ids] == [i.tolist() for i in ids2]
    features = model.encode_qformer(images)
    _, ids3 = model.generate(None, prompts, image_features=features, max_new_tokens=5, stop_strings=[], return_ids=True)
    assert [i.tolist() for i in ids] == [i.tolist() for i in ids3]


def test_prompt_file_is_used_when_samples_carry_no_prompt(repo_root, tmp_path):
    (tmp_path / "prompts.txt").write_text("<Img><ImageHere></Img> Describe the image.\n\n# comment\nWhat is abnormal?\n")
    model = build(repo_root, f"model.prompt_path={tmp_path / 'prompts.txt'}")
    assert model.prompt_list == [
        "###Patient: <Img><ImageHere></Img> Describe the image. ###Doctor: ",
        "###Patient: <Img><ImageHere></Img> What is abnormal? ###Doctor: ",
    ]
    samples = batch()
    del samples["prompt"]
    assert torch.isfinite(model(samples)["loss"])
    with pytest.raises(KeyError, match="no 'prompt' and model.prompt_path is not set"):
        build(repo_root)(samples)


def test_graph_decoding_switch_routes_decoding(repo_root, monkeypatch):
    import types

    import xraygpt.models

    calls = []

    def fake_generate(model, inputs_embeds, attention_mask, **kwargs):
        calls.append((inputs_embeds.shape, attention_mask.shape, kwargs["max_new_tokens"]))
        return torch.tensor([[286, 514, 2, 2]])  # '▁The ▁heart' then EOS padding

    fake = types.SimpleNamespace(generate=fake_generate)
    monkeypatch.setattr(xraygpt.models, "graph_decoding", fake, raising=False)
    model = build(repo_root, "model.use_fast_generation=true")
    texts, ids = model.generate(torch.randn(1, 3, 224, 224), ["Hi"], max_new_tokens=4, return_ids=True)
    assert calls and calls[0][2] == 4 and calls[0][0][:2] == calls[0][1]
    assert ids[0].tolist() == [286, 514] and texts == ["The heart"]


# ------------------------------------------------------------------ errors
def test_missing_files_are_all_named_before_building(repo_root, tmp_path):
    with pytest.raises(CheckpointError) as error:
        build(
            repo_root,
            "model.llama_config=null",
            f"model.llama_model={tmp_path / 'nowhere'}",
            f"model.vit_path={tmp_path / 'eva_vit_g.pth'}",
        )
    message = str(error.value)
    assert f"model.vit_path -> {tmp_path / 'eva_vit_g.pth'} (vision-encoder weights" in message
    assert f"model.llama_model -> {tmp_path / 'nowhere' / 'config.json'} (LLM folder" in message


def test_incomplete_llm_folder_is_named(repo_root, tmp_path):
    from xraygpt.models.llm import load_language_model
    from xraygpt.models.model_config import MiniGPT4Config

    (tmp_path / "vicuna").mkdir()
    with pytest.raises(CheckpointError, match=r"LLM folder not found or incomplete: .*vicuna has no config\.json"):
        load_language_model(MiniGPT4Config(llama_model=str(tmp_path / "vicuna")), vocab_size=10)


def test_wrong_checkpoint_is_rejected(repo_root, seed_reference_dir):
    with pytest.raises(CheckpointError, match="not a MiniGPT-4/XrayGPT checkpoint"):
        build(repo_root, f"model.ckpt={seed_reference_dir / 'eva_vit.pth'}")


def test_checkpoint_with_other_shapes_is_rejected(repo_root, seed_reference_dir):
    with pytest.raises(CheckpointError, match=r"shape mismatches.*llama_proj\.weight: file \[64, 64\] vs model \[32, 32\]"):
        build(repo_root, f"model.ckpt={seed_reference_dir / 'xraygpt_stage2.pth'}")


def test_checkpoint_without_llama_proj_fails_loudly(repo_root, tmp_path):
    torch.save({"model": {"Qformer.bert.embeddings.position_ids": torch.arange(512)[None]}}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match=r"missing trained weights.*llama_proj"):
        build(repo_root, f"model.ckpt={tmp_path / 'empty.pth'}")


def test_qformer_checkpoint_of_other_size_is_rejected(repo_root, seed_reference_dir):
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build(repo_root, f"model.q_former_model={seed_reference_dir / 'blip2_qformer.pth'}")


def test_config_typo_gets_a_suggestion(repo_root):
    with pytest.raises(ConfigError, match="freeze_qfromer.*did you mean 'freeze_qformer'"):
        build(repo_root, "model.freeze_qfromer=false")


@pytest.mark.parametrize(
    "options, message",
    [
        (["model.llama_config=null"], "set model.llama_model .* or model.llama_config"),
        (["model.tokenizer=null"], "llama_config needs model.tokenizer"),
        (["model.lora={r: 2}", "model.freeze_llm=false"], "keep model.freeze_llm: true"),
        (["model.llm_dtype=fp64"], "llm_dtype must be one of"),
    ],
)
def test_inconsistent_model_settings_are_config_errors(repo_root, options, message):
    with pytest.raises(ConfigError, match=message):
        build(repo_root, *options)


def test_low_resource_without_cuda_or_bitsandbytes_is_explained(repo_root, seed_reference_dir):
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU error")
    with pytest.raises(RuntimeError, match=r"low_resource.*(bitsandbytes|CUDA)"):
        build(repo_root, "model.llama_config=null", f"model.llama_model={seed_reference_dir / 'vicuna'}", "model.low_resource=true")


def test_image_features_of_wrong_shape_are_rejected(repo_root):
    model = build(repo_root)
    with pytest.raises(ValueError, match=r"image_features must be \[B, 4, 32\]"):
        model({"image_features": torch.randn(2, 8, 32), "prompt": ["a", "b"], "caption": ["c", "d"]})


def test_medclip_swin_encoder_from_medclip_checkpoint_and_hf_folder(repo_root, tmp_path, caplog):
    swin_cfg = "model.vision_config={embed_dim: 8, depths: [1, 1], num_heads: [1, 2], window_size: 7}"
    model = build(repo_root, swin_cfg, cfg="model_tiny_medclip.yaml")
    encoder = model.visual_encoder
    assert encoder.num_features == 16
    assert model.encode_qformer(torch.randn(1, 3, 224, 224)).shape == (1, 4, 32)

    # a MedCLIP-format file: vision_model.model.* (transformers 4.x Swin names) + heads MiniGPT-4 does not use
    original = encoder.to_original(encoder.state_dict())
    assert any(".attention.self.query." in k for k in original) and all(k.startswith("vision_model.model.") for k in original)
    original["vision_model.projection_head.weight"] = torch.zeros(512, 16)
    original["text_model.model.embeddings.word_embeddings.weight"] = torch.zeros(10, 4)
    torch.save(original, tmp_path / "medclip.bin")
    with caplog.at_level(logging.INFO):
        loaded = build(repo_root, swin_cfg, f"model.vit_path={tmp_path / 'medclip.bin'}", cfg="model_tiny_medclip.yaml")
    assert "ignored 1 MedCLIP projection-head weights" in caplog.text
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.visual_encoder.state_dict()[key], value), key

    encoder.swin.save_pretrained(tmp_path / "swin")
    from_folder = build(repo_root, f"model.vit_path={tmp_path / 'swin'}", cfg="model_tiny_medclip.yaml")
    for key, value in encoder.state_dict().items():
        assert torch.equal(from_folder.visual_encoder.state_dict()[key], value), key


def test_streamed_text_holds_back_a_partial_end_symbol():
    from xraygpt.models.answer_text import stream_until

    assert list(stream_until(["The heart", " is normal.#", "##", " more"], "###")) == ["The heart", " is normal."]
    assert "".join(stream_until(["a#", "#b", " c"], "###")) == "a##b c"
    assert list(stream_until(["no end"], "###")) == ["no end"]
