"""The parts interface FSDP, the dry-run plan and the sharded export use (MiniGPT-4 has it, the stand-in has not)."""
import pytest
import torch

from tests.fsdp_support import TINY_MODEL
from tests.train_support import train_in_process, write_config
from xraygpt.common.errors import CheckpointLoadError, ConfigurationError
from xraygpt.runners import distributed_checkpoint as dcp_ckpt
from xraygpt.runners import fsdp


def _tiny(**overrides):
    from xraygpt.models.mini_gpt4 import MiniGPT4

    torch.manual_seed(0)
    return MiniGPT4.from_config({**TINY_MODEL, "arch": "mini_gpt4", **overrides})


def test_the_image_side_is_what_the_feature_cache_reads_and_the_llm_is_sharded_by_layer():
    model = _tiny()
    image_side = {id(p) for p in fsdp.image_side_parameters(model)}
    cached = {id(t) for _, t in model.feature_tensors() if isinstance(t, torch.nn.Parameter)}
    assert image_side == cached and image_side  # everything before the projection, nothing after
    llm = {id(p) for p in model.language_model().parameters()}
    assert not llm & image_side
    assert len(fsdp.decoder_layers(model)) == TINY_MODEL["llama_config"]["num_hidden_layers"]
    roles = {name.split(".")[0]: model.parameter_role(name) for name, _ in model.named_parameters()}
    assert roles == {"visual_encoder": "vision", "ln_vision": "other", "qformer": "other", "query_tokens": "other",
                     "llama_model": "llm", "llama_proj": "other"}


def test_lora_adapters_are_planned_in_fp32():
    model = _tiny(freeze_llm=True, lora={"r": 2, "target_modules": ["q_proj"]})
    roles = {model.parameter_role(n) for n, _ in model.named_parameters() if "lora_" in n}
    assert roles == {"other"}


def test_original_names_without_a_model_equal_the_models_own():
    model = _tiny(freeze_qformer=False)
    state = model.trainable_state_dict()
    assert any(k.startswith("qformer.") for k in state) and "query_tokens" in state
    expected = model.to_original_names(state)
    assert type(model).original_checkpoint_names(state) == expected
    assert "Qformer.bert.encoder.layer.0.attention.self.query.weight" in expected
    with pytest.raises(CheckpointLoadError, match=r"^step_9 trains the vision encoder, whose original names depend"):
        type(model).original_checkpoint_names({**state, "visual_encoder.x": torch.zeros(1)}, source="step_9")


def test_a_model_without_the_interface_gets_one_line_errors(tmp_path):
    with pytest.raises(ConfigurationError, match=r"^run.strategy: fsdp shards an LLM's decoder layers, but "
                                                 r"StandInModel has no language_model\(\); use run.strategy: ddp "
                                                 r"for this model$"):
        train_in_process(write_config(tmp_path, run={"strategy": "fsdp"}))
    assert not list((tmp_path / "out").rglob("*.safetensors"))

    from xraygpt.train import main

    with pytest.raises(ConfigurationError, match=r"^train.py --dry-run plans a model built on the meta device, but "
                                                 r"StandInModel has no build_on_meta_device\(\); run without"):
        main(["--cfg-path", str(write_config(tmp_path)), "--dry-run"])

    (tmp_path / "step").mkdir()
    (tmp_path / "step" / "config.yaml").write_text("model:\n  arch: standin\n", encoding="utf-8")
    with pytest.raises(CheckpointLoadError, match=r"^StandInModel \(standin\) has no original checkpoint format"):
        dcp_ckpt.original_names({}, tmp_path / "step")
    (tmp_path / "step" / "config.yaml").write_text("", encoding="utf-8")
    with pytest.raises(CheckpointLoadError, match=r"config.yaml names no model.arch"):
        dcp_ckpt.original_names({}, tmp_path / "step")
