"""``xraygpt.export --to hf-blip2``: transformers loads the folder and reproduces our logits and greedy tokens."""
from __future__ import annotations

import json

import pytest
import torch

from xraygpt.common.config import Config
from xraygpt.conversation.loading import build_model
from xraygpt.datasets.image_io import load_medical_image
from xraygpt.models.hf_blip2 import export_hf_blip2, prompt_layout, read_export_info
from xraygpt.processors.image_processors import CLIP_MEAN, CLIP_STD, Blip2ImageEvalProcessor

CFG = "eval_configs/seed_reference_tiny.yaml"
QUESTION = "What are the key findings in this chest x-ray image?"


@pytest.fixture(scope="module")
def model(repo_root):
    torch.manual_seed(0)
    return build_model(Config({"cfg_path": str(repo_root / CFG)}), "cpu")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "xraygpt-blip2"
    return export_hf_blip2(model, out, image_mean=CLIP_MEAN, image_std=CLIP_STD, source=CFG)


@pytest.fixture(scope="module")
def image(seed_reference_dir):
    return load_medical_image(seed_reference_dir / "images" / "xray_0.png")


def _ours(model, pixels, prompt_text):
    embeds, mask = model.prepare_generation_inputs(pixels, [prompt_text])
    return model.llama_model(inputs_embeds=embeds, attention_mask=mask).logits


@torch.no_grad()
def test_transformers_reproduces_logits_and_greedy_tokens(model, exported, image):
    from transformers import AutoProcessor, Blip2ForConditionalGeneration, Blip2Processor

    hf = Blip2ForConditionalGeneration.from_pretrained(exported).eval()
    processor = AutoProcessor.from_pretrained(exported)
    assert isinstance(processor, Blip2Processor)
    info = read_export_info(exported)
    inputs = processor(images=image, text=info["prompt"].format(question=QUESTION), return_tensors="pt")

    from xraygpt.models.prompting import build_generation_batch, wrap_prompt

    ours_batch = build_generation_batch(model.tokenizer, [wrap_prompt(" " + QUESTION, model.config.prompt_template)], 8)
    expected_ids = ours_batch.input_ids.masked_fill(ours_batch.image_mask, info["image_token_id"])
    assert inputs["input_ids"].tolist() == expected_ids.tolist()

    pixels = Blip2ImageEvalProcessor(224)(image).unsqueeze(0)
    pixel_gap = (inputs["pixel_values"] - pixels).abs().max().item()
    print(f"processor pixel_values vs blip2_image_eval: max |diff| {pixel_gap:.2e}")
    assert pixel_gap < 0.05  # PIL bicubic in one pass vs our two explicit passes: 8-bit rounding only

    ours = _ours(model, pixels, " " + QUESTION)
    theirs = hf(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=pixels).logits
    gap = (ours - theirs).abs().max().item()
    print(f"exported vs ours, logits max |diff| {gap:.2e}")
    assert ours.shape == theirs.shape and gap < 1e-4

    _, ref_ids = model.generate(pixels, [" " + QUESTION], max_new_tokens=30, return_ids=True)
    generated = hf.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=pixels,
                            max_new_tokens=30, stop_strings=info["stop_strings"], tokenizer=processor.tokenizer)
    new = generated[0, inputs["input_ids"].shape[1]:]
    assert new[: len(ref_ids[0])].tolist() == ref_ids[0].tolist()


@torch.no_grad()
def test_post_layernorm_eps_is_the_only_gap(model, exported, image):
    """With post_layernorm's eps set back to ln_vision's 1e-5 the image features agree to float rounding."""
    from transformers import Blip2ForConditionalGeneration

    hf = Blip2ForConditionalGeneration.from_pretrained(exported).eval()
    pixels = Blip2ImageEvalProcessor(224)(image).unsqueeze(0)
    def image_embeddings():
        vision = hf.vision_model(pixel_values=pixels).last_hidden_state
        queries = hf.qformer(query_embeds=hf.query_tokens, encoder_hidden_states=vision).last_hidden_state
        return hf.language_projection(queries)

    ours = model.encode_img(pixels)[0]
    as_exported = image_embeddings()
    hf.vision_model.post_layernorm.eps = 1e-5
    with_ln_vision_eps = image_embeddings()
    gap_exported = (ours - as_exported).abs().max().item()
    gap_fixed = (ours - with_ln_vision_eps).abs().max().item()
    print(f"image embeddings max |diff|: eps 1e-6 (exported) {gap_exported:.2e}, eps 1e-5 {gap_fixed:.2e}")
    assert gap_fixed <= 1e-5 and gap_exported < 1e-4


def test_config_and_files(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["Blip2ForConditionalGeneration"]
    assert config["num_query_tokens"] == 8 and config["image_token_index"] == 0
    assert config["text_config"]["model_type"] == "llama"
    assert (exported / "model.safetensors").is_file() and (exported / "generation_config.json").is_file()
    assert not list(exported.parent.glob(".*partial*"))


@torch.no_grad()
def test_lora_models_export_merged_and_as_adapter(repo_root, tmp_path, image):
    from peft import PeftModel
    from transformers import Blip2ForConditionalGeneration

    cfg = Config({"cfg_path": str(repo_root / CFG),
                  "options": ["model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"]})
    torch.manual_seed(0)
    lora_model = build_model(cfg, "cpu")
    for name, param in lora_model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter): make it matter
            param.data.normal_(0, 0.5)
    pixels = Blip2ImageEvalProcessor(224)(image).unsqueeze(0)
    ours = _ours(lora_model, pixels, " " + QUESTION)
    baseline = None
    for mode in ("merge", "adapter"):
        out = export_hf_blip2(lora_model, tmp_path / mode, image_mean=CLIP_MEAN, image_std=CLIP_STD, lora=mode)
        from transformers import AutoProcessor

        info = read_export_info(out)
        inputs = AutoProcessor.from_pretrained(out)(text=info["prompt"].format(question=QUESTION), return_tensors="pt")
        hf = Blip2ForConditionalGeneration.from_pretrained(out).eval()
        if mode == "adapter":
            assert (out / "lora_adapter" / "adapter_config.json").is_file()
            baseline = hf(input_ids=inputs["input_ids"], pixel_values=pixels).logits
            hf.language_model = PeftModel.from_pretrained(hf.language_model, out / "lora_adapter")
        logits = hf(input_ids=inputs["input_ids"], pixel_values=pixels).logits
        assert (logits - ours).abs().max().item() < 1e-4, mode
    assert (_ours(lora_model, pixels, " " + QUESTION) - ours).abs().max().item() < 1e-5  # exporting left it as it was
    assert (baseline - ours).abs().max().item() > 1e-3  # the adapter really changes the answer


def test_refuses_a_non_empty_folder(model, tmp_path):
    from xraygpt.common.errors import ConfigurationError

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigurationError, match="exists and is not empty"):
        export_hf_blip2(model, tmp_path, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_prompt_layout(model):
    assert prompt_layout(model, "<unk>", "Q?") == "###Patient: <Img>" + "<unk>" * 8 + " </Img> Q? ###Doctor: "


def test_cli(repo_root, tmp_path, capsys):
    from xraygpt.common.cli import run_cli
    from xraygpt.export import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(["--cfg-path", str(repo_root / CFG), "--to", "hf-blip2", str(out), "--dtype", "bf16"]))
    assert info.value.code == 0 and f"exported to {out}" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("language_projection.weight").dtype == torch.bfloat16
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(["--cfg-path", str(repo_root / CFG), "--to", "hf-blip2", str(out)]))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out} exists and is not empty; choose a new folder or pass --overwrite")
