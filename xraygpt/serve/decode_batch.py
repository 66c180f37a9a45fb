"""Rows that decode together and can join or leave between steps (iteration-level batching).

Why not ``generate()``: it fixes the batch for the whole answer, so a request that arrives
one token after a batch started would wait for the slowest row of that batch. Here every
row has its own slice of one KV cache; a new group is prefilled on its own and its cache is
merged in (left-padded to a common length), and finished or cancelled rows are dropped
between steps. Positions come from each row's own count of real tokens, so a row sees
exactly the context it would see alone (greedy answers equal ``model.generate``, tested).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xraygpt.models.graph_decoding import _cache_kwarg_name


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zeros in front of ``tensor`` along ``dim`` up to ``length``."""
    extra = length - tensor.shape[dim]
    if extra <= 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - (dim % tensor.dim())) + [extra, 0]
    return F.pad(tensor, pad)


class DecodeBatch:
    """One KV cache for all running rows, its left-padded attention mask and each row's next position."""

    def __init__(self, llm: nn.Module):
        self.llm = llm
        self._cache_kw = _cache_kwarg_name(llm)  # "past_key_values" up to transformers 5.17, then "cache"
        self.cache: Any = None  # transformers DynamicCache, rows along dim 0 of every layer
        self.mask: Optional[torch.Tensor] = None  # [B, T] long: 1 = real key
        self.positions: Optional[torch.Tensor] = None  # [B] position id of each row's next token

    @property
    def size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any):
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        returned = getattr(out, "cache", None)
        return out.logits[:, -1, :].float(), returned if returned is not None else out.past_key_values

    @torch.inference_mode()
    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run new left-padded prompts, append them as rows; returns their next-token logits ``[b, V]``."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        logits, cache = self._forward(inputs_embeds, attention_mask, positions, None)
        self._append(cache, attention_mask.long(), attention_mask.long().sum(-1))
        return logits

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``[B]``, in row order); returns the next logits ``[B, V]``."""
        embeds = self.llm.get_input_embeddings()(tokens.to(self.mask.device)[:, None])
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], dim=1)
        logits, self.cache = self._forward(embeds, self.mask, self.positions[:, None], self.cache)
        self.positions = self.positions + 1
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order); columns no remaining row uses are cut off."""
        if len(rows) == self.size:
            return
        if not rows:
            self.cache = self.mask = self.positions = None
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.mask, self.positions = self.mask[index], self.positions[index]
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, unused:]
            layer.values = layer.values[index, :, unused:]
        self.mask = self.mask[:, unused:]

    def reset(self) -> None:
        """Forget every row (after an error)."""
        self.cache = self.mask = self.positions = None

    def _append(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, positions
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(mask, length, 1)])
        self.positions = torch.cat([self.positions, positions])
