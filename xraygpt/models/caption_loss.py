"""Language-model loss that runs the LM head only where there is a target.

Why: transformers' ``labels=`` path projects every position through the 32000-wide LM head and upcasts all
those logits to float32, although only caption tokens carry a loss (prompt, image slots and padding do not).
Projecting just the labelled positions gives the same loss and gradients while skipping that work and memory
(the logits of a batch of 32 x 216 tokens alone are 0.9 GB in float32, twice with their gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def caption_lm_loss(llm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over the positions whose label is not ``IGNORE_INDEX`` (HF's causal-LM loss)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden = llm.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
    logits = llm.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])
