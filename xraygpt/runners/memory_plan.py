"""``train.py --dry-run``: GPU memory per process for the chosen strategy, before any weight is loaded.

The model is built on the meta device from its config (weight files are not
read; the LLM's architecture comes from its ``config.json``), so parameter
counts are exact.  Bytes then follow from the dtypes the run would use on a
GPU (the model's ``parameter_role`` says which parameters load in the LLM's
or the vision encoder's dtype) and from how the strategy places each tensor
(the model's ``language_model()`` and ``frozen_image_parts()``):

* ``ddp``: every process holds all weights, their gradients (plus DDP's
  gradient buckets, the same size again, with more than one process) and
  AdamW's two moments.
* ``fsdp``: the sharded weights, gradients and moments are split over the
  processes; each process also holds the replicated frozen image side, the
  root unit (embeddings, norm, LM head, the image-to-LLM projection) gathered
  for the whole step and two gathered decoder layers (the running one and the
  prefetched one).

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

from dataclasses import dataclass, field
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


def meta_model(model_section: Any) -> nn.Module:
    """The configured model with every weight on the meta device (its class's ``build_on_meta_device``)."""
    from xraygpt.common.registry import registry

    arch = model_section.get("arch") if hasattr(model_section, "get") else getattr(model_section, "arch", None)
    if not arch:
        raise ConfigurationError("model.arch is not set: the dry run plans the model it names")
    model_cls = registry.get_model_class(arch)
    build = getattr(model_cls, "build_on_meta_device", None)
    if build is None:
        raise ConfigurationError(f"train.py --dry-run plans a model built on the meta device, but {model_cls.__name__} "
                                 "has no build_on_meta_device(); run without --dry-run")
    return build(model_section)


def _param_bytes(model: nn.Module, name: str, param: nn.Parameter, model_cfg: Any) -> int:
    role = model.parameter_role(name)  # the LLM and the vision encoder as loaded; the rest in fp32
    dtype = {"llm": model_cfg.llm_dtype, "vision": model_cfg.vit_precision}.get(role, "fp32")
    return param.numel() * _BYTES[_gpu_dtype(dtype)]


def plan_memory(model: nn.Module, model_cfg: MiniGPT4Config, run: RunConfig, processes: int, seq_len: Optional[int] = None
                ) -> MemoryPlan:
    """Per-process memory of training ``model`` (from :func:`meta_model`) with ``run`` on ``processes`` GPUs."""
    from xraygpt.runners.fsdp import decoder_layers, image_side_parameters, language_model

    strategy, world = run.strategy, max(processes, 1)
    sharded_strategy = strategy == "fsdp"
    compute = 2 if sharded_strategy and run.fsdp_param_dtype in ("auto", "bf16", "fp16") else None
    named = dict(model.named_parameters())
    sizes = {n: _param_bytes(model, n, p, model_cfg) for n, p in named.items()}
    trainable = {n for n, p in named.items() if p.requires_grad}
    image_ids = {id(p) for p in image_side_parameters(model)}
    image_side = {n for n, p in named.items() if id(p) in image_ids}
    replicated = image_side - trainable
    if not sharded_strategy or run.fsdp_shard_frozen:
        replicated = set() if sharded_strategy else set(named)
    sharded = set(named) - replicated

    layers = decoder_layers(model)
    layer_params = [{n for n, p in named.items() if any(p is q for q in layer.parameters())} for layer in layers]
    in_layers = set().union(*layer_params)
    root = {n for n in sharded if n not in in_layers and n not in image_side}

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

    llm = language_model(model)
    hidden, inter = int(llm.config.hidden_size), int(llm.config.intermediate_size)
    vocab = int(llm.get_output_embeddings().weight.shape[0])
    a = compute or (2 if run.amp or _gpu_dtype(model_cfg.llm_dtype) != "fp32" else 4)
    tokens = run.batch_size_train * (seq_len or default_seq_len(model_cfg))
    per_layer = tokens * (8 * hidden + a * (7 * hidden + 4 * inter))
    # A frozen LLM keeps the same tensors: the gradient still flows through it to the image projection.
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

    model = meta_model(model_section)
    model_cfg = model_config_from(model_section)
    world = processes or int(os.environ.get("WORLD_SIZE", 1))
    plan = plan_memory(model, model_cfg, run, world, seq_len)
    assumed = gpu_memory_gib is not None
    return format_plan(plan, gpu_memory_gib * GIB if assumed else visible_gpu_memory(), assumed)
