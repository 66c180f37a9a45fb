"""torch.compile applied to the LLM's transformer blocks only ("regional compilation").

Why: in a training step with a frozen 7B LLM about a fifth of the GPU time goes to small element-wise
kernels around the matrix products (float32 RMSNorm, rotary embedding, SiLU * up, residual adds), and their
float32 intermediates are kept for the backward pass. Inductor fuses each group into one kernel and keeps
fewer, smaller tensors. All blocks share one code object, so the compile is paid once, not per block.
"""
from __future__ import annotations

import torch
from torch import nn


def compile_decoder_layers(llm: nn.Module, dynamic: bool | None = None) -> int:
    """Compile every decoder block of a transformers causal LM in place; returns how many were compiled."""
    layers = llm.get_decoder().layers
    config = torch._dynamo.config
    # One code object serves every block; allow enough cached variants (batch and length buckets).
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
    for layer in layers:
        if getattr(layer, "_compiled_call_impl", None) is None:  # already compiled: keep its cache
            layer.compile(dynamic=dynamic)
    return len(layers)


def decompile_decoder_layers(llm: nn.Module) -> None:
    """Back to eager blocks (e.g. to reproduce the original's eager fp16 setting in a benchmark)."""
    for layer in llm.get_decoder().layers:
        layer._compiled_call_impl = None
