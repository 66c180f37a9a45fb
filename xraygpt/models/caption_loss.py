"""Language-model loss that runs the LM head only where there is a target.

Why: transformers' ``labels=`` path projects every position through the 32000-wide LM head and upcasts all
those logits to float32, although only caption tokens carry a loss (prompt, image slots and padding do not).
Projecting just the labelled positions gives the same loss and gradients while skipping that work and memory
(the logits of a batch of 32 x 216 tokens alone are 0.9 GB in float32, twice with their gradient).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from xraygpt.common.constants import IGNORE_INDEX


def caption_lm_loss(llm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """Mean next-token NLL over the positions whose label is not ``IGNORE_INDEX`` (HF's causal-LM loss).

    ``fused`` runs LM head + cross-entropy through torch.compile, so the float32 logits and their
    log-softmax are never stored (the backward recomputes them inside one kernel).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden = llm.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
    head = _compiled_head_nll() if fused else _head_nll
    return head(hidden[:, :-1][keep], llm.get_output_embeddings().weight, targets[keep])


def _head_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets)


@functools.cache
def _compiled_head_nll():
    return torch.compile(_head_nll, dynamic=True)
