"""The BLIP-2 Q-Former as MiniGPT-4 uses it: query tokens only, no text path.

Built on transformers ``Blip2QFormerModel`` with ``use_qformer_text_input=False``,
which is exactly MiniGPT-4's pruned BERT (no word/position embeddings, no
text FFN, no LM head); cross-attention sits in every ``cross_attention_freq``-th layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from xraygpt.models.model_config import validate_section


@dataclass
class QFormerSettings:
    """bert-base-uncased numbers, as BLIP-2 initialises its Q-Former."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02


def build_qformer(qformer_config: Mapping[str, Any], encoder_width: int) -> nn.Module:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    settings = validate_section(QFormerSettings, qformer_config, "model.qformer_config")
    config = Blip2QFormerConfig(
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        intermediate_size=settings.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=settings.hidden_dropout_prob,
        attention_probs_dropout_prob=settings.attention_probs_dropout_prob,
        layer_norm_eps=settings.layer_norm_eps,
        initializer_range=settings.initializer_range,
        cross_attention_frequency=settings.cross_attention_freq,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,
    )
    return Blip2QFormerModel(config)


def init_query_tokens(num_query_token: int, qformer: nn.Module) -> nn.Parameter:
    tokens = torch.empty(1, num_query_token, qformer.config.hidden_size)
    nn.init.normal_(tokens, mean=0.0, std=qformer.config.initializer_range)
    return nn.Parameter(tokens)
