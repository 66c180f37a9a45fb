"""One LLaMA decode step (one new token per row) written for replay from a CUDA graph.

Why not the transformers forward: at batch 1 a decode step is memory-bound, and the transformers forward
spends it in ~1,300 small kernels (fp32 RMSNorm pieces, rotary, mask and cache bookkeeping) around 224 GEMVs.
Here every block is a function of plain tensors, so

* q/k/v and gate/up are each ONE matrix product: the weights are concatenated once and the transformers
  modules keep working on row views of the fused storage (no extra memory; training and prefill unchanged);
* ``torch.compile`` can fuse the elementwise work of a block, compiled once for all blocks (the block index is
  never a Python constant, unlike transformers' ``cache.update(..., layer_idx)``, which made dynamo recompile
  per layer);
* attention reads only the first ``span`` cache slots (a length bucket), not the whole static cache.

Numerics follow ``LlamaDecoderLayer`` (fp32 RMSNorm, rotary from the model's own rotary module, SDPA with an
additive mask, SiLU-gated MLP). Quantized or trainable linears (torchao int8, bitsandbytes, LoRA) are called as
modules, unfused and uncompiled.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def supported(llm: nn.Module) -> str | None:
    """None when ``llm`` is a plain transformers LLaMA-style causal LM this step can run, else why not."""
    config = getattr(llm, "config", None)
    model = getattr(llm, "model", None)
    if config is None or model is None or not hasattr(model, "layers") or not hasattr(llm, "lm_head"):
        return "not a LLaMA-style causal LM"
    if getattr(config, "model_type", None) not in ("llama",):
        return f"model_type {getattr(config, 'model_type', None)!r}"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "activation or biases differ from LLaMA's"
    layer = model.layers[0]
    if not all(hasattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention projections not found"
    return None


def _plain(weight: torch.Tensor) -> bool:
    return type(weight) in (torch.Tensor, nn.Parameter) and not weight.requires_grad


def fuse_rows(modules: list[nn.Linear]) -> torch.Tensor | None:
    """Concatenate the weights of ``modules`` into one tensor and point each module at its rows of it.

    Returns the fused weight, or None (nothing changed) when a weight is quantized, trainable or mismatched.
    Already-fused modules are recognised, so this is idempotent.
    """
    weights = [m.weight for m in modules]
    if not all(_plain(w) for w in weights) or len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    previous = getattr(modules[0], "_xraygpt_fused_rows", None)
    if previous is not None and all(w.untyped_storage().data_ptr() == previous.untyped_storage().data_ptr() for w in weights):
        return previous
    fused = torch.cat([w.detach() for w in weights], dim=0)
    start = 0
    for module, weight in zip(modules, weights):
        rows = weight.shape[0]
        module.weight = nn.Parameter(fused[start:start + rows], requires_grad=False)
        start += rows
    modules[0]._xraygpt_fused_rows = fused
    return fused


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention_inputs(x, ln1, wqkv, cos, sin, eps: float, n_heads: int, n_kv: int, head_dim: int):
    """RMSNorm, one q/k/v product and rotary for one new token per row: q, k, v as [B, H, 1, head_dim]."""
    batch = x.shape[0]
    h = _rms_norm(x, ln1, eps)
    q, k, v = F.linear(h, wqkv).split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    q = _rotate(q.view(batch, 1, n_heads, head_dim).transpose(1, 2), cos, sin)
    k = _rotate(k.view(batch, 1, n_kv, head_dim).transpose(1, 2), cos, sin)
    return q, k, v.view(batch, 1, n_kv, head_dim).transpose(1, 2)


def attention_and_mlp(x, q, keys, values, mask, wo, ln2, wgu, wdown, eps: float, n_heads: int, n_kv: int,
                      head_dim: int):
    """Attention over the given cache prefix, output projection, residual, RMSNorm, one gate/up product, MLP."""
    batch = x.shape[0]
    attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=head_dim ** -0.5,
                                          enable_gqa=n_kv != n_heads)
    x = x + F.linear(attn.transpose(1, 2).reshape(batch, 1, n_heads * head_dim), wo)
    gate, up = F.linear(_rms_norm(x, ln2, eps), wgu).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, wdown)


def write_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, slot: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Store the new token's key/value ``[B, H, 1, D]``: at column ``slot[0]`` for every row when ``slot`` has
    one element, else at column ``slot[b]`` of row ``b`` (rows of different lengths, as a server batches them).
    ``rows`` (``arange(B)``) may be given so a step over many layers builds it once."""
    if slot.numel() == 1:
        k_cache.index_copy_(2, slot, k)
        v_cache.index_copy_(2, slot, v)
        return
    if rows is None:
        rows = torch.arange(k.shape[0], device=k.device)
    k_cache[rows, :, slot] = k[:, :, 0]
    v_cache[rows, :, slot] = v[:, :, 0]


def block_modules(layer: nn.Module, x, k_cache, v_cache, cos, sin, slot, mask,
                  eps: float, n_heads: int, n_kv: int, head_dim: int, span: int):
    """One block calling the layer's own linears (quantized / LoRA / unfusable weights)."""
    batch = x.shape[0]
    attn_mod, mlp = layer.self_attn, layer.mlp
    h = _rms_norm(x, layer.input_layernorm.weight, eps)
    q = _rotate(attn_mod.q_proj(h).view(batch, 1, n_heads, head_dim).transpose(1, 2), cos, sin)
    k = _rotate(attn_mod.k_proj(h).view(batch, 1, n_kv, head_dim).transpose(1, 2), cos, sin)
    v = attn_mod.v_proj(h).view(batch, 1, n_kv, head_dim).transpose(1, 2)
    write_cache(k_cache, v_cache, slot, k, v)
    attn = F.scaled_dot_product_attention(q, k_cache[:, :, :span], v_cache[:, :, :span], attn_mask=mask[..., :span],
                                          scale=head_dim ** -0.5, enable_gqa=n_kv != n_heads)
    x = x + attn_mod.o_proj(attn.transpose(1, 2).reshape(batch, 1, n_heads * head_dim))
    h = _rms_norm(x, layer.post_attention_layernorm.weight, eps)
    return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


def _compilable(layer: nn.Module) -> bool:
    """Plain ``nn.Linear`` modules (torchao keeps them, swapping only the weight tensor) compile; others
    (bitsandbytes ``Linear8bitLt``, adapters) are called uncompiled."""
    linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
               layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
    return all(type(m) is nn.Linear for m in linears)


@dataclass
class _Block:
    layer: nn.Module
    fused: tuple | None  # (ln1, wqkv, wo, ln2, wgu, wdown) or None -> call the modules


class LlamaDecodeStep:
    """Runs embeddings [B, 1, D] through every block and the LM head, against given KV cache tensors."""

    def __init__(self, llm: nn.Module, fuse: bool = True, compile_blocks: bool = False):
        config = llm.config
        self.llm = llm
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = float(config.rms_norm_eps)
        self.blocks = []
        for layer in llm.model.layers:
            fused = None
            if fuse:
                attn, mlp = layer.self_attn, layer.mlp
                wqkv = fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj])
                wgu = fuse_rows([mlp.gate_proj, mlp.up_proj]) if wqkv is not None else None
                if wqkv is not None and wgu is not None and _plain(attn.o_proj.weight) and _plain(mlp.down_proj.weight):
                    fused = (layer.input_layernorm.weight, wqkv, attn.o_proj.weight,
                             layer.post_attention_layernorm.weight, wgu, mlp.down_proj.weight)
            self.blocks.append(_Block(layer, fused))
        self.fused = all(b.fused is not None for b in self.blocks)
        self.pre_fn, self.post_fn, self.modules_fn = attention_inputs, attention_and_mlp, block_modules
        self.compiled = compile_blocks
        if compile_blocks:
            # One compiled function serves all blocks: the weights (and, unfused, the layer module) are
            # arguments, never Python constants.
            config_ = torch._dynamo.config
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(config_, name):
                    setattr(config_, name, max(getattr(config_, name), 64))
            # The cache write stays outside the compiled parts: no graph input is mutated.
            # Automatic dynamic shapes: a second batch size or attention span recompiles once, generically.
            self.pre_fn = torch.compile(attention_inputs)
            self.post_fn = torch.compile(attention_and_mlp)
            if all(_compilable(b.layer) for b in self.blocks if b.fused is None):
                self.modules_fn = torch.compile(block_modules)

    def rotary_table(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, head_dim] for positions 0..length-1, from the model's own rotary module."""
        positions = torch.arange(length, device=device)[None]
        probe = torch.zeros(1, 1, self.head_dim, device=device, dtype=dtype)
        cos, sin = self.llm.model.rotary_emb(probe, positions)
        return cos[0], sin[0]

    def __call__(self, embeds: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]], cos: torch.Tensor,
                 sin: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor, span: int) -> torch.Tensor:
        """Logits [B, V] of the new token; ``cos``/``sin`` [B, 1, 1, head_dim], ``mask`` additive [B, 1, 1, S];
        ``slot`` is the cache column written: ``[1]`` (the same for every row) or ``[B]`` (one per row).

        If compiling fails (an unsupported linear type, a compiler error), the step logs once and runs the same
        functions uncompiled from then on; rerunning is safe because every cache write is recomputed.
        """
        try:
            return self._run(embeds, caches, cos, sin, slot, mask, span)
        except Exception as err:  # noqa: BLE001 - any compile failure: same results, uncompiled
            if not self.compiled or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                raise
            log.warning("compiling the decode step failed (%s: %s); running it uncompiled", type(err).__name__, err)
            self.pre_fn, self.post_fn, self.modules_fn = attention_inputs, attention_and_mlp, block_modules
            self.compiled = False
            return self._run(embeds, caches, cos, sin, slot, mask, span)

    def _run(self, embeds, caches, cos, sin, slot, mask, span: int) -> torch.Tensor:
        x = embeds
        dims = dict(eps=self.eps, n_heads=self.n_heads, n_kv=self.n_kv, head_dim=self.head_dim)
        prefix_mask = mask[..., :span]
        rows = None if slot.numel() == 1 else torch.arange(x.shape[0], device=x.device)  # per-row cache writes
        for block, (k_cache, v_cache) in zip(self.blocks, caches):
            if block.fused is None:
                x = self.modules_fn(block.layer, x, k_cache, v_cache, cos, sin, slot, mask, span=span, **dims)
                continue
            ln1, wqkv, wo, ln2, wgu, wdown = block.fused
            q, k, v = self.pre_fn(x, ln1, wqkv, cos, sin, **dims)
            write_cache(k_cache, v_cache, slot, k, v, rows)
            x = self.post_fn(x, q, k_cache[:, :, :span], v_cache[:, :, :span], prefix_mask, wo, ln2, wgu, wdown, **dims)
        x = self.llm.model.norm(x)
        return self.llm.lm_head(x[:, -1, :])


def cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The per-layer (keys, values) tensors [B, H_kv, S, D] of an initialised transformers StaticCache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    elif hasattr(cache, "key_cache"):
        pairs = list(zip(cache.key_cache, cache.value_cache))
    else:
        return None
    if not pairs or any(not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) for k, v in pairs):
        return None
    return pairs
