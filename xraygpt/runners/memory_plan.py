"""``train.py --dry-run``: GPU memory per process for the chosen strategy, before any weight is loaded.

The model is built on the meta device from its config (weight files are not
read; the LLM's architecture comes from its ``config.json``), so parameter
counts are exact.  Bytes then follow from the dtypes the run would use on a
GPU and from how the strategy places each tensor:

* ``ddp``: every process holds all weights, their gradients (plus DDP's
  gradient buckets, the same size again, with more than one process) and
  AdamW's two moments.
* ``fsdp``: the sharded weights, gradients and moments are split over the
  processes; each process also holds the replicated frozen image side, the
  root unit (embeddings, norm, LM head, ``llama_proj``) gathered for the whole
  step and two gathered decoder layers (the running one and the prefetched one).

Activations are an estimate for one micro-batch of ``batch_size_train`` x T
tokens through the LLaMA blocks (SDPA attention, no T^2 term) and the LM head
over the caption tokens; the frozen encoders run without autograd and keep
nothing.  Per layer and token a block keeps ``8H + a(7H + 4I)`` bytes (two
fp32 RMSNorm inputs; normed inputs, q, k, v, attention output and its copy;
gate, SiLU, up and their product, with ``a`` bytes per element of the compute
dtype); with activation checkpointing only each layer's input (``aH``) stays,
plus one layer being recomputed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from xraygpt.common.errors import ConfigurationError
from xraygpt.common.schema import RunConfig
from xraygpt.models.model_config import MiniGPT4Config

GIB = 2**30
PROMPT_ALLOWANCE = 24
"""Tokens of the conversation template and question around the image (the original prompts take 16-24)."""
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_HEADROOM = 0.9
"""Share of a GPU's memory a plan may use (CUDA context, allocator fragmentation and NCCL buffers take the rest)."""


@dataclass
class MemoryPlan:
    strategy: str
    processes: int
    batch: int
    seq_len: int
    activation_checkpointing: bool
    params: Dict[str, int]
    """Parameter counts: total, trainable, sharded (fsdp), replicated."""
    bytes: Dict[str, float] = field(default_factory=dict)
    """Per process: parameters, gradients, optimizer, activations, total."""
    notes: List[str] = field(default_factory=list)


def _gpu_dtype(name: str) -> str:
    return "bf16" if name == "auto" else name


def meta_model(model_cfg: Any) -> nn.Module:
    """The configured MiniGPT-4 with every weight on the meta device (no file but the tokenizer is read)."""
    from xraygpt.models.mini_gpt4 import MiniGPT4
    from xraygpt.models.model_config import model_config_from

    cfg = model_config_from(model_cfg)
    llama_config = cfg.llama_config
    if cfg.llama_model:
        path = Path(cfg.llama_model) / "config.json"
        if not path.is_file():
            raise ConfigurationError(f"model.llama_model: {path} not found; the dry run reads the LLM's "
                                     "architecture from it")
        llama_config = json.loads(path.read_text(encoding="utf-8"))
    vit_path = cfg.vit_path if cfg.vit_path and Path(cfg.vit_path).is_dir() else None  # an HF folder: its config
    blank = dataclasses.replace(cfg, vit_path=vit_path, q_former_model=None, ckpt=None, llama_model=None,
                                llama_config=llama_config, tokenizer=cfg.tokenizer or cfg.llama_model,
                                low_resource=False)
    with torch.device("meta"):
        return MiniGPT4(blank)


def _param_bytes(name: str, param: nn.Parameter, model_cfg: Any) -> int:
    if name.startswith("llama_model.") and "lora_" not in name:
        dtype = _gpu_dtype(model_cfg.llm_dtype)
    elif name.startswith("visual_encoder."):
        dtype = _gpu_dtype(model_cfg.vit_precision)
    else:  # Q-Former, ln_vision, query tokens, llama_proj and LoRA adapters are kept in fp32
        dtype = "fp32"
    return param.numel() * _BYTES[dtype]


def plan_memory(model: nn.Module, model_cfg: MiniGPT4Config, run: RunConfig, processes: int, seq_len: Optional[int] = None
                ) -> MemoryPlan:
    """Per-process memory of training ``model`` (a meta-device MiniGPT-4) with ``run`` on ``processes`` GPUs."""
    from xraygpt.runners.fsdp import FROZEN_VISUAL_PARTS, decoder_layers

    strategy, world = run.strategy, max(processes, 1)
    sharded_strategy = strategy == "fsdp"
    compute = 2 if sharded_strategy and run.fsdp_param_dtype in ("auto", "bf16", "fp16") else None
    named = dict(model.named_parameters())
    sizes = {n: _param_bytes(n, p, model_cfg) for n, p in named.items()}
    trainable = {n for n, p in named.items() if p.requires_grad}
    replicated = {n for n in named if n.split(".")[0] in FROZEN_VISUAL_PARTS and n not in trainable}
    if not sharded_strategy or run.fsdp_shard_frozen:
        replicated = set() if sharded_strategy else set(named)
    sharded = set(named) - replicated

    layers = decoder_layers(model)
    layer_params = [{n for n, p in named.items() if any(p is q for q in layer.parameters())} for layer in layers]
    in_layers = set().union(*layer_params)
    root = {n for n in sharded if n not in in_layers and n.split(".")[0] not in FROZEN_VISUAL_PARTS}

    def total(names) -> int:
        return sum(sizes[n] for n in names)

    def gathered(names) -> int:  # bytes once gathered in the compute dtype
        return sum(named[n].numel() * compute if compute else sizes[n] for n in names)

    if sharded_strategy:
        largest = max(layer_params, key=total)
        params = total(sharded) / world + total(replicated) + gathered(root) + 2 * gathered(largest)
        grads = total(sharded & trainable) / world + gathered(largest & trainable)
        optimizer = 2 * total(sharded & trainable) / world
    else:
        params = total(named)
        grads = total(trainable) * (2 if world > 1 else 1)
        optimizer = 2 * total(trainable)

    llm = model.llama_model.config
    hidden, inter = int(llm.hidden_size), int(llm.intermediate_size)
    vocab = int(model.llama_model.get_output_embeddings().weight.shape[0])
    a = compute or (2 if run.amp or _gpu_dtype(model_cfg.llm_dtype) != "fp32" else 4)
    tokens = run.batch_size_train * (seq_len or default_seq_len(model_cfg))
    per_layer = tokens * (8 * hidden + a * (7 * hidden + 4 * inter))
    # A frozen LLM keeps the same tensors: the gradient still flows through it to llama_proj.
    blocks = (len(layers) * tokens * a * hidden + per_layer) if run.activation_checkpointing \
        else len(layers) * per_layer
    head = run.batch_size_train * model_cfg.max_txt_len * vocab * (a + 8)
    activations = blocks + head
    plan = MemoryPlan(strategy, world, run.batch_size_train, tokens // run.batch_size_train, run.activation_checkpointing,
                      params={"total": sum(p.numel() for p in named.values()),
                              "trainable": sum(named[n].numel() for n in trainable),
                              "sharded": sum(named[n].numel() for n in sharded) if sharded_strategy else 0,
                              "replicated": sum(named[n].numel() for n in replicated)})
    plan.bytes = {"parameters": params, "gradients": grads, "optimizer": optimizer, "activations": activations,
                  "total": params + grads + optimizer + activations}
    return plan


def default_seq_len(model_cfg: MiniGPT4Config) -> int:
    """Image slots + the longest caption + the prompt allowance: 32 + 160 + 24 = 216 for XrayGPT."""
    return model_cfg.num_query_token + model_cfg.max_txt_len + PROMPT_ALLOWANCE


def visible_gpu_memory() -> Optional[float]:
    """Bytes of the smallest visible GPU, or None without one."""
    if not torch.cuda.is_available():
        return None
    return float(min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())))


def format_plan(plan: MemoryPlan, gpu_bytes: Optional[float], assumed: bool) -> str:
    p = plan.params
    lines = [
        f"memory plan: strategy {plan.strategy}, {plan.processes} process(es), batch {plan.batch} x {plan.seq_len} "
        f"tokens per process, activation checkpointing {'on' if plan.activation_checkpointing else 'off'}",
        f"  parameters: {p['total']:,} ({p['trainable']:,} trainable"
        + (f", {p['sharded']:,} sharded, {p['replicated']:,} replicated" if plan.strategy == "fsdp" else "") + ")",
        "  per GPU (GiB):",
    ]
    for key in ("parameters", "gradients", "optimizer", "activations", "total"):
        lines.append(f"    {key:<12} {plan.bytes[key] / GIB:9.2f}")
    if gpu_bytes is None:
        lines.append("  no GPU visible: pass --gpu-memory-gib to check the fit")
    else:
        source = "assumed (--gpu-memory-gib)" if assumed else "visible"
        budget = _HEADROOM * gpu_bytes
        if plan.bytes["total"] > budget:
            lines.append(f"WARNING: needs {plan.bytes['total'] / GIB:.1f} GiB per GPU, more than {budget / GIB:.1f} GiB "
                         f"({_HEADROOM:.0%} of the {source} {gpu_bytes / GIB:.0f} GiB): it will not fit. Try "
                         "run.strategy: fsdp on more GPUs, run.activation_checkpointing: true, a smaller "
                         "run.batch_size_train with run.accum_grad_iters, or model.lora")
        else:
            lines.append(f"  fits: {plan.bytes['total'] / GIB:.1f} of {budget / GIB:.1f} GiB usable on the {source} "
                         f"{gpu_bytes / GIB:.0f} GiB GPU")
    lines.append("  (activations are an estimate; parameters, gradients and optimizer follow from exact counts)")
    return "\n".join(lines)


def describe_plan(model_section: Any, run: RunConfig, processes: Optional[int] = None,
                  gpu_memory_gib: Optional[float] = None, seq_len: Optional[int] = None) -> str:
    """The ``--dry-run`` report: ``processes`` defaults to WORLD_SIZE (torchrun) or 1; a given
    ``gpu_memory_gib`` is checked instead of the visible GPU."""
    import os

    from xraygpt.models.model_config import model_config_from

    model_cfg = model_config_from(model_section)
    world = processes or int(os.environ.get("WORLD_SIZE", 1))
    plan = plan_memory(meta_model(model_cfg), model_cfg, run, world, seq_len)
    assumed = gpu_memory_gib is not None
    return format_plan(plan, gpu_memory_gib * GIB if assumed else visible_gpu_memory(), assumed)
