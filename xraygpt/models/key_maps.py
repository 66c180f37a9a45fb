"""Explicit name tables between the original checkpoints and our modules.

The original code loads every file with ``load_state_dict(strict=False)``, so a
renamed or misspelt key silently leaves weights random.  Here each key either
matches a rule of a table, or matches a rule that drops it on purpose (counted
and logged), or raises :class:`KeyMapError`.  Every rename rule is invertible,
so checkpoints flow both ways (LAVIS -> ours -> LAVIS gives the same names).
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from xraygpt.common.errors import CheckpointLoadError

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]


class KeyMapError(CheckpointLoadError, KeyError):
    """A checkpoint key no table knows, or a tensor that cannot be converted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Rename:
    """``source`` and ``target`` are patterns where ``{i}`` stands for a layer index."""

    source: str
    target: str

    def forward(self, key: str) -> Optional[str]:
        match = _pattern(self.source).match(key)
        if match is None:
            return None
        return self.target.replace("{i}", match.group("i")) if "{i}" in self.source else self.target

    def backward(self, key: str) -> Optional[str]:
        return Rename(self.target, self.source).forward(key)


@lru_cache(maxsize=None)
def _pattern(template: str) -> "re.Pattern[str]":
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


@dataclass(frozen=True)
class Drop:
    """Keys matching ``pattern`` (a regex) are discarded; ``why`` names the group in the log."""

    pattern: str
    why: str

    def matches(self, key: str) -> bool:
        return re.match(self.pattern, key) is not None


def _rename_all(
    state: Mapping[str, torch.Tensor],
    renames: Sequence[Rename],
    drops: Sequence[Drop],
    what: str,
    reverse: bool = False,
) -> Tuple[StateDict, Counter]:
    out: StateDict = {}
    dropped: Counter = Counter()
    unknown: List[str] = []
    for key, value in state.items():
        for rule in renames:
            new = rule.backward(key) if reverse else rule.forward(key)
            if new is not None:
                out[new] = value
                break
        else:
            drop = next((d for d in drops if d.matches(key)), None)
            if drop is None:
                unknown.append(key)
            else:
                dropped[drop.why] += 1
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise KeyMapError(f"{what}: unknown keys {shown}; is this the right file for this slot?")
    return out, dropped


def log_dropped(dropped: Counter, source: str) -> None:
    for why, count in sorted(dropped.items()):
        logger.info("%s: ignored %d %s", source, count, why)


# --------------------------------------------------------------------- EVA ViT
# LAVIS/EVA ``VisionTransformer`` names -> transformers ``Blip2VisionModel`` names.
EVA_RENAMES: Tuple[Rename, ...] = (
    Rename("cls_token", "embeddings.class_embedding"),
    Rename("pos_embed", "embeddings.position_embedding"),
    Rename("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
    Rename("patch_embed.proj.bias", "embeddings.patch_embedding.bias"),
    Rename("blocks.{i}.norm1.weight", "encoder.layers.{i}.layer_norm1.weight"),
    Rename("blocks.{i}.norm1.bias", "encoder.layers.{i}.layer_norm1.bias"),
    Rename("blocks.{i}.attn.qkv.weight", "encoder.layers.{i}.self_attn.qkv.weight"),
    Rename("blocks.{i}.attn.proj.weight", "encoder.layers.{i}.self_attn.projection.weight"),
    Rename("blocks.{i}.attn.proj.bias", "encoder.layers.{i}.self_attn.projection.bias"),
    Rename("blocks.{i}.norm2.weight", "encoder.layers.{i}.layer_norm2.weight"),
    Rename("blocks.{i}.norm2.bias", "encoder.layers.{i}.layer_norm2.bias"),
    Rename("blocks.{i}.mlp.fc1.weight", "encoder.layers.{i}.mlp.fc1.weight"),
    Rename("blocks.{i}.mlp.fc1.bias", "encoder.layers.{i}.mlp.fc1.bias"),
    Rename("blocks.{i}.mlp.fc2.weight", "encoder.layers.{i}.mlp.fc2.weight"),
    Rename("blocks.{i}.mlp.fc2.bias", "encoder.layers.{i}.mlp.fc2.bias"),
)
# EVA keeps q and v biases apart (no k bias); Blip2Attention holds one qkv bias.
_EVA_QV_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.(q|v)_bias$")
_OUR_QKV_BIAS = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$")
# Heads of the full EVA-CLIP model that BLIP-2 never builds.
EVA_DROPS: Tuple[Drop, ...] = (
    Drop(r"^(norm|fc_norm|head)\.", "EVA classification-head weights (unused by BLIP-2)"),
)
_EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def eva_to_ours(state: Mapping[str, torch.Tensor], depth: int) -> Tuple[StateDict, Counter]:
    """Convert an ``eva_vit_g.pth``-style state dict for a ViT with ``depth`` blocks.

    Blocks at index >= ``depth`` are dropped (BLIP-2 keeps 39 of EVA-CLIP-g's 40).
    """
    kept: Dict[str, torch.Tensor] = {}
    biases: Dict[int, Dict[str, torch.Tensor]] = {}
    extra: Counter = Counter()
    for key, value in state.items():
        block = _EVA_BLOCK.match(key)
        if block and int(block.group(1)) >= depth:
            extra[f"tensors of blocks beyond depth {depth} (the original drops them too)"] += 1
            continue
        qv = _EVA_QV_BIAS.match(key)
        if qv:
            biases.setdefault(int(qv.group(1)), {})[qv.group(2)] = value
        else:
            kept[key] = value
    out, dropped = _rename_all(kept, EVA_RENAMES, EVA_DROPS, "EVA ViT checkpoint")
    for layer, qv in biases.items():
        if set(qv) != {"q", "v"}:
            raise KeyMapError(f"EVA ViT checkpoint: block {layer} has only {sorted(qv)}_bias; both q_bias and v_bias are needed")
        q, v = qv["q"], qv["v"]
        out[f"encoder.layers.{layer}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out, dropped + extra


def ours_to_eva(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Inverse of :func:`eva_to_ours` (the key bias must be zero, as EVA has none)."""
    biases = {k: v for k, v in state.items() if _OUR_QKV_BIAS.match(k)}
    rest = {k: v for k, v in state.items() if k not in biases}
    out, _ = _rename_all(rest, EVA_RENAMES, (), "vision encoder state", reverse=True)
    for key, bias in biases.items():
        layer = _OUR_QKV_BIAS.match(key).group(1)
        q, k, v = bias.chunk(3)
        if torch.count_nonzero(k):
            raise KeyMapError(f"{key}: the key part of the qkv bias is non-zero; EVA checkpoints cannot hold it")
        out[f"blocks.{layer}.attn.q_bias"] = q
        out[f"blocks.{layer}.attn.v_bias"] = v
    return out


# -------------------------------------------------------------------- Q-Former
# LAVIS ``Blip2Base`` names (as MiniGPT-4 stores them) -> our MiniGPT4 names.
_QF_LAYER = "Qformer.bert.encoder.layer.{i}."
_OUR_LAYER = "qformer.encoder.layer.{i}."
_QF_SUFFIXES = [
    (f"{att}.self.{proj}.{p}", f"{att}.attention.{proj}.{p}")
    for att in ("attention", "crossattention")
    for proj in ("query", "key", "value")
    for p in ("weight", "bias")
] + [
    (f"{att}.output.{mod}.{p}", f"{att}.output.{mod}.{p}")
    for att in ("attention", "crossattention")
    for mod in ("dense", "LayerNorm")
    for p in ("weight", "bias")
] + [
    (f"intermediate_query.dense.{p}", f"intermediate_query.dense.{p}") for p in ("weight", "bias")
] + [
    (f"output_query.{mod}.{p}", f"output_query.{mod}.{p}") for mod in ("dense", "LayerNorm") for p in ("weight", "bias")
]
QFORMER_RENAMES: Tuple[Rename, ...] = (
    Rename("query_tokens", "query_tokens"),
    Rename("ln_vision.weight", "ln_vision.weight"),
    Rename("ln_vision.bias", "ln_vision.bias"),
    Rename("Qformer.bert.embeddings.LayerNorm.weight", "qformer.layernorm.weight"),
    Rename("Qformer.bert.embeddings.LayerNorm.bias", "qformer.layernorm.bias"),
    *(Rename(_QF_LAYER + src, _OUR_LAYER + dst) for src, dst in _QF_SUFFIXES),
)
QFORMER_DROPS: Tuple[Drop, ...] = (
    Drop(r"^Qformer\.bert\.embeddings\.position_ids$", "Q-Former position-id buffers"),
    Drop(
        r"^Qformer\.(cls\.|bert\.embeddings\.(word|position)_embeddings\.|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)",
        "text-only Q-Former weights (MiniGPT-4 discards them)",
    ),
    Drop(r"^(vision_proj|text_proj|itm_head|t5_proj|opt_proj|llm_proj)\.|^temp$", "BLIP-2 heads unused by MiniGPT-4"),
    Drop(r"^visual_encoder\.", "vision-encoder weights (loaded from vit_path instead)"),
    Drop(r"^(t5_model|opt_model|llm_model)\.", "BLIP-2 language-model weights"),
)


def qformer_to_ours(state: Mapping[str, torch.Tensor]) -> Tuple[StateDict, Counter]:
    """Convert a LAVIS BLIP-2 (``blip2_pretrained*.pth``) state dict."""
    return _rename_all(state, QFORMER_RENAMES, QFORMER_DROPS, "BLIP-2 Q-Former checkpoint")


def ours_to_qformer(state: Mapping[str, torch.Tensor]) -> StateDict:
    return _rename_all(state, QFORMER_RENAMES, (), "Q-Former state", reverse=True)[0]


# -------------------------------------------------------------- MedCLIP Swin
# MedCLIP wraps an HF Swin as ``vision_model.model``; its projection head and
# text tower are not part of the patch-token encoder.
MEDCLIP_PREFIX = "vision_model.model."
MEDCLIP_DROPS: Tuple[Drop, ...] = (
    Drop(r"^vision_model\.projection_head\.", "MedCLIP projection-head weights"),
    Drop(r"^text_model\.", "MedCLIP text-encoder weights"),
    Drop(r"^logit_scale$", "MedCLIP logit scale"),
    Drop(r"^vision_model\.model\.(embeddings\.position_ids|.*relative_position_index)$", "Swin index buffers"),
)


# MedCLIP was saved with transformers 4.x Swin names; newer transformers renamed
# the attention and MLP projections.  Order matters: attention.output.dense
# must be renamed before the block's output.dense.
SWIN_V4_TO_V5: Tuple[Tuple[str, str], ...] = (
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.self.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table"),
    (".attention.self.relative_position_index", ".attention.relative_position_bias.relative_position_index"),
    (".attention.output.dense.", ".attention.o_proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)


def swin_v4_to_v5(key: str) -> str:
    for old, new in SWIN_V4_TO_V5:
        key = key.replace(old, new)
    return key


def swin_v5_to_v4(key: str) -> str:
    for old, new in reversed(SWIN_V4_TO_V5):
        key = key.replace(new, old)
    return key


def medclip_to_ours(state: Mapping[str, torch.Tensor], new_swin_names: bool) -> Tuple[StateDict, Counter]:
    """``vision_model.model.*`` -> SwinModel names (renamed when the installed Swin uses v5 names)."""
    out: StateDict = {}
    dropped: Counter = Counter()
    unknown = []
    for key, value in state.items():
        drop = next((d for d in MEDCLIP_DROPS if d.matches(key)), None)
        if drop is not None:
            dropped[drop.why] += 1
        elif key.startswith(MEDCLIP_PREFIX):
            local = key[len(MEDCLIP_PREFIX):]
            out[swin_v4_to_v5(local) if new_swin_names else local] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyMapError(f"MedCLIP checkpoint: unknown keys {', '.join(unknown[:8])}; expected vision_model.model.* keys")
    return out, dropped


def ours_to_medclip(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {MEDCLIP_PREFIX + swin_v5_to_v4(k): v for k, v in state.items()}


def with_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {prefix + k: v for k, v in state.items()}


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
