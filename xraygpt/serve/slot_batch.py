"""Rows that join and leave between decode steps, over a static KV cache and captured decode steps.

Why not :class:`~xraygpt.serve.decode_batch.DecodeBatch` (the transformers forward over a growing dynamic
cache): at real size its eager step costs ~30 ms, so a server decodes at a fifth of what one GPU gives a single
chat. Here each request owns one row ("slot") of a static cache ``[slots, H_kv, window, D]`` per layer, holding
its own keys at columns ``0 .. length-1`` (no padding), and one decode step for all rows is the fused LLaMA
step of :mod:`xraygpt.models.llama_decode` with a per-row write column, replayed from a CUDA graph captured
per (rows bucket, attention span). Nothing captured depends on which requests are running: joining, leaving
and prompt lengths only change device tensors (tokens, lengths, key masks), so the graphs captured at warm-up
serve every later mix.

A new group of prompts is prefilled with the transformers forward (left-padded, positions from the mask,
exactly as alone) and its keys/values are moved into free slots, left-aligned. Free slots inside the bucket
still run the step, parked: they write and read only their column 0, so they cost compute but never touch a
running row. Greedy answers equal ``model.generate`` (tested on CPU in float32).
"""
from __future__ import annotations

import logging
import time
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from xraygpt.models import llama_decode
from xraygpt.models.graph_decoding import GraphedCall, attention_spans

log = logging.getLogger(__name__)


def row_buckets(slots: int) -> List[int]:
    """Row counts a step is captured for: powers of two below ``slots``, then ``slots``."""
    buckets, size = [], 1
    while size < slots:
        buckets.append(size)
        size *= 2
    return buckets + [slots]


class SlotDecodeBatch:
    """Same interface as ``DecodeBatch`` (``prefill``, ``step``, ``keep``, ``size``), rows kept in slots."""

    def __init__(self, llm: nn.Module, kernel: llama_decode.LlamaDecodeStep, slots: int, window: int,
                 use_graph: bool):
        embed = llm.get_input_embeddings()
        self.llm, self.kernel, self.embed = llm, kernel, embed
        self.slots, self.window = slots, window
        device, dtype = embed.weight.device, embed.weight.dtype
        self.device, self.dtype = device, dtype
        self.use_graph = use_graph and device.type == "cuda"
        shape = (slots, kernel.n_kv, window, kernel.head_dim)
        self.kv = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                   for _ in llm.model.layers]
        self.cos, self.sin = kernel.rotary_table(window, device, dtype)
        z = dict(device=device)
        self.tokens = torch.zeros(slots, dtype=torch.long, **z)  # the token each slot feeds next
        self.lengths = torch.zeros(slots, dtype=torch.long, **z)  # keys held = write column = next position
        self.active = torch.zeros(slots, dtype=torch.long, **z)  # 1 = a running row; 0 = parked at column 0
        self.key_valid = torch.zeros(slots, window, dtype=torch.bool, **z)
        self.mask_min = torch.finfo(dtype).min
        self.buckets, self.spans = row_buckets(slots), attention_spans(window)
        self._graphs: dict[tuple[int, int], GraphedCall] = {}
        self.slot_of: List[int] = []  # slot of each row, in the caller's row order
        self.host_lengths = [0] * slots
        self._index: Optional[torch.Tensor] = None  # slot_of as a device tensor

    # ------------------------------------------------------------------ the DecodeBatch interface
    @property
    def size(self) -> int:
        return len(self.slot_of)

    def free_slots(self) -> int:
        return self.slots - len(self.slot_of)

    @torch.inference_mode()
    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run new left-padded prompts, give each a free slot; returns their next-token logits ``[b, V]``."""
        count, width = attention_mask.shape
        if count > self.free_slots():
            raise ValueError(f"{count} new rows but only {self.free_slots()} free slots")
        lengths = attention_mask.long().sum(-1)
        if int(lengths.max()) >= self.window:
            raise ValueError(f"a prompt of {int(lengths.max())} tokens does not fit the {self.window}-token window")
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        taken = set(self.slot_of)
        new = [s for s in range(self.slots) if s not in taken][:count]
        slots = torch.tensor(new, dtype=torch.long, device=self.device)
        # Left-align each row: column t of the slot takes prompt column t + padding of that row.
        padding = (width - lengths).to(self.device)
        source = (torch.arange(width, device=self.device)[None] + padding[:, None]).clamp_(max=width - 1)
        for (keys, values), layer in zip(self.kv, cache.layers):
            index = source[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            keys[slots, :, :width] = layer.keys.gather(2, index).to(self.dtype)
            values[slots, :, :width] = layer.values.gather(2, index).to(self.dtype)
        self.key_valid[slots] = False
        self.key_valid[slots, :width] = torch.arange(width, device=self.device)[None] < lengths.to(self.device)[:, None]
        self.lengths[slots] = lengths.to(self.device)
        self.active[slots] = 1
        for slot, length in zip(new, lengths.tolist()):
            self.host_lengths[slot] = int(length)
        self.slot_of.extend(new)
        self._index = None
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``[B]``, in row order); returns the next logits ``[B, V]`` in row order."""
        index = self._row_index()
        self.tokens.index_copy_(0, index, tokens.to(self.device))
        bucket = next(b for b in self.buckets if b > max(self.slot_of))
        longest = max(self.host_lengths[slot] for slot in self.slot_of)  # the column this step writes
        span = next(s for s in self.spans if s > longest)
        logits = self._call(bucket, span)()
        for slot in self.slot_of:
            self.host_lengths[slot] = min(self.host_lengths[slot] + 1, self.window - 1)
        return logits.index_select(0, index)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order); the other rows' slots are parked for reuse."""
        kept = [self.slot_of[i] for i in rows]
        gone = sorted(set(self.slot_of) - set(kept))
        self.slot_of = kept
        self._index = None
        if gone:
            self._park(gone)

    def reset(self) -> None:
        """Forget every row (after an error); the cache stays allocated."""
        if self.slot_of:
            self._park(list(self.slot_of))
        self.slot_of, self._index = [], None

    # ------------------------------------------------------------------ warm-up and the captured step
    @torch.inference_mode()
    def warm_up(self) -> float:
        """Capture the step for every (rows bucket, attention span) now, on parked slots; seconds taken."""
        started = time.perf_counter()
        for bucket in self.buckets:
            for span in self.spans:
                for _ in range(2 if self.use_graph else 1):  # eager once, then captured
                    self._call(bucket, span)()
        self._park(list(range(self.slots)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def captures(self) -> int:
        return sum(call.captures for call in self._graphs.values())

    def _call(self, bucket: int, span: int) -> GraphedCall:
        call = self._graphs.get((bucket, span))
        if call is None:
            call = self._graphs[(bucket, span)] = GraphedCall(lambda: self._decode(bucket, span),
                                                              enabled=self.use_graph)
        return call

    def _decode(self, bucket: int, span: int) -> torch.Tensor:
        """One token for slots ``0 .. bucket-1``; graph-safe (no host sync, only static buffers)."""
        column = self.lengths[:bucket]
        rows = torch.arange(bucket, device=self.device)
        self.key_valid.view(-1).index_fill_(0, rows * self.window + column, True)  # no host value: graph-safe
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        mask = torch.where(self.key_valid[:bucket, :span], zero, torch.full_like(zero, self.mask_min))[:, None, None]
        cos = self.cos.index_select(0, column)[:, None, None, :]
        sin = self.sin.index_select(0, column)[:, None, None, :]
        embeds = self.embed(self.tokens[:bucket])[:, None, :]
        caches = [(keys[:bucket], values[:bucket]) for keys, values in self.kv]
        logits = self.kernel(embeds, caches, cos, sin, column, mask, span)
        self.lengths[:bucket] = (column + self.active[:bucket]).clamp_(max=self.window - 1)
        return logits.float()

    def _park(self, slots: List[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        self.active[index] = 0
        self.lengths[index] = 0
        self.key_valid[index] = False
        for slot in slots:
            self.host_lengths[slot] = 0

    def _row_index(self) -> torch.Tensor:
        if self._index is None:
            self._index = torch.tensor(self.slot_of, dtype=torch.long, device=self.device)
        return self._index


def slot_batch_for(model: Any, slots: int) -> Optional[SlotDecodeBatch]:
    """The slot engine for ``model``'s LLM, or None (with the reason logged) where it does not apply:
    ``model.use_fast_generation`` off, an LLM the fused step does not support (non-LLaMA, LoRA-wrapped)."""
    from xraygpt.models.graph_decoding import _is_peft, get_fast_generator

    llm = model.llama_model
    config = getattr(model, "config", None)
    if config is not None and not getattr(config, "use_fast_generation", True):
        log.info("serve: model.use_fast_generation is off; decoding with the transformers forward")
        return None
    reason = "a LoRA-wrapped LLM" if _is_peft(llm) else llama_decode.supported(llm)
    generator = get_fast_generator(llm)
    kernel = None if reason else generator.step_kernel(llm.get_input_embeddings().weight.device)
    if kernel is None:
        log.info("serve: decoding with the transformers forward (%s)", reason or "decode step set to hf")
        return None
    window = int(getattr(llm.config, "max_position_embeddings", 2048))
    weight = llm.get_input_embeddings().weight
    if weight.device.type == "cuda":
        per_slot = kv_bytes_per_slot(llm.config, len(llm.model.layers), window, weight.element_size())
        slots = slots_that_fit(slots, per_slot, torch.cuda.mem_get_info(weight.device)[0])
        if slots < 1:
            return None
    return SlotDecodeBatch(llm, kernel, slots, window, use_graph=generator.use_cuda_graph)


def kv_bytes_per_slot(config: Any, layers: int, window: int, element_size: int) -> int:
    """Bytes of one full-window cache row (keys and values of every layer)."""
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * layers * n_kv * window * head_dim * element_size


def slots_that_fit(wanted: int, per_slot: int, free: int, headroom_bytes: int = 3 * 2**30) -> int:
    """``wanted``, or fewer where ``free`` bytes cannot hold that many full-window cache rows.

    One slot of a 7B LLaMA at 2,048 tokens is 1 GiB in bf16, so ``--max-batch-size 16`` needs 16 GiB beside
    the model: on a 24 GB card the server would fail at start. ``headroom_bytes`` stay free for prefill
    activations and the captured graphs. Logged when it shrinks; 0 = not even one slot (the caller falls back).
    """
    fit = max(0, int((free - headroom_bytes) // per_slot))
    if fit < wanted:
        log.warning("serve: %d slots of %.2f GiB do not fit in %.1f GiB of free GPU memory; using %d "
                    "(lower --max-batch-size to silence this)", wanted, per_slot / 2**30, free / 2**30, fit)
    return min(wanted, fit)
