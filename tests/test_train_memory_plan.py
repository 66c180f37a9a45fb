"""train.py --dry-run: the memory plan's numbers on the tiny MiniGPT-4 against a count by hand."""

from tests.fsdp_support import TINY_MODEL, write_config
from xraygpt.common.schema import RunConfig
from xraygpt.models.llm import load_tokenizer
from xraygpt.runners.memory_plan import meta_model, plan_memory

H, I, L = 32, 64, 2  # TINY_MODEL's LLaMA


def _counts():
    vocab = len(load_tokenizer(TINY_MODEL["tokenizer"]))
    layer = 4 * H * H + 3 * H * I + 2 * H  # q, k, v, o; gate, up, down; two RMSNorms
    root = vocab * H + H + vocab * H + (16 * H + H)  # embeddings, final norm, LM head, llama_proj (16 -> 32)
    return vocab, layer, root


def _model_cfg(**overrides):
    from xraygpt.models.model_config import model_config_from

    return model_config_from({**TINY_MODEL, "arch": "mini_gpt4", **overrides})


def test_meta_model_counts_equal_the_real_model_and_the_hand_count():
    from xraygpt.models.mini_gpt4 import MiniGPT4

    cfg = _model_cfg()
    vocab, layer, root = _counts()
    meta = meta_model(cfg)
    real = MiniGPT4(cfg)
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
    assert sum(p.numel() for p in meta.parameters() if p.requires_grad) == L * layer + root


def test_ddp_and_fsdp_bytes_follow_the_hand_count():
    cfg = _model_cfg()
    vocab, layer, root = _counts()
    model = meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable, frozen = L * layer + root, total - (L * layer + root)
    tokens = 4 * (2 + 16 + 24)  # batch 4 x (2 query slots + max_txt_len 16 + prompt allowance 24)

    ddp = plan_memory(model, cfg, RunConfig(task="t", batch_size_train=4), processes=1)
    assert ddp.params == {"total": total, "trainable": trainable, "sharded": 0, "replicated": total}
    assert ddp.bytes["parameters"] == 4 * total  # fp32 everywhere (llm_dtype / vit_precision fp32)
    assert ddp.bytes["gradients"] == 4 * trainable
    assert ddp.bytes["optimizer"] == 2 * 4 * trainable
    per_layer = tokens * (8 * H + 4 * (7 * H + 4 * I))
    assert ddp.bytes["activations"] == L * per_layer + 4 * 16 * vocab * (4 + 8)
    assert plan_memory(model, cfg, RunConfig(task="t", batch_size_train=4), 2).bytes["gradients"] == 8 * trainable

    run = RunConfig(task="t", batch_size_train=4, strategy="fsdp", activation_checkpointing=True)
    fsdp = plan_memory(model, cfg, run, processes=2)
    assert fsdp.params["sharded"] == trainable and fsdp.params["replicated"] == frozen
    # shards of fp32 weights, the frozen image side whole, the root and two layers gathered in bf16
    assert fsdp.bytes["parameters"] == 4 * trainable / 2 + 4 * frozen + 2 * root + 2 * 2 * layer
    assert fsdp.bytes["gradients"] == 4 * trainable / 2 + 2 * layer
    assert fsdp.bytes["optimizer"] == 2 * 4 * trainable / 2
    recompute = tokens * (8 * H + 2 * (7 * H + 4 * I))
    assert fsdp.bytes["activations"] == L * tokens * 2 * H + recompute + 4 * 16 * vocab * (2 + 8)
    assert fsdp.bytes["total"] == sum(fsdp.bytes[k] for k in ("parameters", "gradients", "optimizer", "activations"))


def test_lora_plan_trains_only_adapters():
    cfg = _model_cfg(freeze_llm=True, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    plan = plan_memory(meta_model(cfg), cfg, RunConfig(task="t", batch_size_train=4), processes=1)
    adapters = L * 2 * (2 * H + 2 * H)  # q and v: A [2, H] and B [H, 2]
    assert plan.params["trainable"] == adapters + 16 * H + H
    assert plan.bytes["optimizer"] == 2 * 4 * plan.params["trainable"]


def test_dry_run_prints_the_plan_and_warns_when_it_does_not_fit(tmp_path, capsys):
    from xraygpt.train import main

    config = write_config(tmp_path, run={"strategy": "fsdp"})
    assert main(["--cfg-path", str(config), "--dry-run", "--processes", "2", "--gpu-memory-gib", "100"]) == 0
    out = capsys.readouterr().out
    assert "memory plan: strategy fsdp, 2 process(es), batch 4 x 42 tokens" in out and "fits:" in out
    assert main(["--cfg-path", str(config), "--dry-run", "--gpu-memory-gib", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: needs" in out and "it will not fit" in out
    assert not (tmp_path / "out").exists()  # nothing was trained or written
