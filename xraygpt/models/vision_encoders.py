"""Frozen image encoders that turn pixels into the token sequence the Q-Former reads.

Both are transformers classes holding the original weights through explicit
key maps (:mod:`xraygpt.models.key_maps`):

* ``eva_clip_g``: EVA ViT-g/14 as BLIP-2 uses it, on ``Blip2VisionModel``.
  BLIP-2 takes the last block's full token sequence *without* a final norm
  (``ln_vision`` is applied outside), so ``post_layernorm`` is removed.
* ``medclip_vit``: MedCLIP's Swin-T image tower, on ``SwinModel``; its patch
  tokens (after Swin's final norm) go to the Q-Former.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xraygpt.common.config import ConfigError
from xraygpt.common.registry import registry
from xraygpt.models import key_maps
from xraygpt.models.checkpoint_io import CheckpointError, load_exact, read_state_dict, skipped_init
from xraygpt.models.model_config import validate_section

logger = logging.getLogger(__name__)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (the original ``ln_vision``; eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def resize_position_embedding(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubically resample the patch grid of ``[1, extra + n, D]`` position embeddings to ``num_patches``.

    Lets ``eva_vit_g.pth`` (trained at 224 px) drive other image sizes, as the original does.
    """
    extra = pos_embed.shape[1] - int(math.isqrt(pos_embed.shape[1])) ** 2
    old_side = math.isqrt(pos_embed.shape[1] - extra)
    new_side = math.isqrt(num_patches)
    if old_side * old_side + extra != pos_embed.shape[1] or new_side * new_side != num_patches:
        raise CheckpointError(f"cannot resize position embeddings {list(pos_embed.shape)} to {num_patches} patches (not square grids)")
    if old_side == new_side:
        return pos_embed
    from timm.layers import resample_abs_pos_embed

    logger.info("resized position embeddings from %dx%d to %dx%d patches", old_side, old_side, new_side, new_side)
    # No antialiasing: the original resamples with plain bicubic interpolation.
    return resample_abs_pos_embed(pos_embed, [new_side, new_side], [old_side, old_side], num_prefix_tokens=extra,
                                  interpolation="bicubic", antialias=False)


# ----------------------------------------------------------------------- EVA
def _zero_key_part(grad: torch.Tensor) -> torch.Tensor:
    width = grad.shape[0] // 3
    grad = grad.clone()
    grad[width : 2 * width] = 0
    return grad


@dataclass
class EvaViTSettings:
    """EVA ViT-g/14 as BLIP-2 builds it (39 of EVA-CLIP-g's 40 blocks)."""

    width: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637
    patch_size: int = 14
    layer_norm_eps: float = 1e-6


@registry.register_vision_encoder("eva_clip_g")
class EvaViTG(nn.Module):
    def __init__(self, settings: EvaViTSettings, image_size: int):
        super().__init__()
        from transformers import Blip2VisionConfig, Blip2VisionModel

        config = Blip2VisionConfig(
            hidden_size=settings.width,
            intermediate_size=int(settings.width * settings.mlp_ratio),
            num_hidden_layers=settings.depth,
            num_attention_heads=settings.num_heads,
            image_size=image_size,
            patch_size=settings.patch_size,
            hidden_act="gelu",
            layer_norm_eps=settings.layer_norm_eps,
            qkv_bias=True,
            attention_dropout=0.0,
            initializer_range=0.02,  # the class default (1e-10) makes random test models degenerate
        )
        self.settings = settings
        self.vit = Blip2VisionModel(config)
        # BLIP-2 reads the un-normalised last block; ln_vision (eps 1e-5) follows outside.
        del self.vit.post_layernorm
        self.num_features = settings.width
        # EVA has no key bias: keep that third of the qkv bias at zero if the ViT is ever trained.
        for layer in self.vit.encoder.layers:
            layer.self_attn.qkv.bias.register_hook(_zero_key_part)

    @classmethod
    def build(cls, image_size: int, vision_config: Mapping[str, Any], weights: Optional[str], use_grad_checkpoint: bool, drop_path_rate: float) -> "EvaViTG":
        if drop_path_rate:
            raise ConfigError("model.drop_path_rate > 0 is not supported for eva_clip_g (Blip2VisionModel has no stochastic depth); use 0 as the original configs do")
        settings = validate_section(EvaViTSettings, vision_config, "model.vision_config")
        with skipped_init(bool(weights)):  # load_exact below overwrites every parameter
            encoder = cls(settings, image_size)
        if use_grad_checkpoint:
            encoder.vit.gradient_checkpointing_enable()
        if weights:
            encoder.load_original(read_state_dict(weights, "EVA ViT-g weights (eva_vit_g.pth)"), source=str(weights))
        return encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 1 + (H/14)*(W/14), width]`` (class token first)."""
        dtype = self.vit.embeddings.patch_embedding.weight.dtype
        hidden = self.vit.embeddings(pixel_values.to(dtype))
        return self.vit.encoder(inputs_embeds=hidden).last_hidden_state

    # Names in checkpoints saved in the original layout (``visual_encoder.*``).
    def from_original(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        converted, dropped = key_maps.eva_to_ours(state, depth=self.settings.depth)
        key_maps.log_dropped(dropped, "EVA ViT checkpoint")
        pos = "embeddings.position_embedding"
        if pos in converted:
            expected = self.vit.embeddings.num_patches
            converted[pos] = resize_position_embedding(converted[pos], expected)
        return {f"vit.{k}": v for k, v in converted.items()}

    def to_original(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return key_maps.ours_to_eva(key_maps.strip_prefix(state, "vit."))

    def load_original(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        load_exact(self, self.from_original(state), source)


# ------------------------------------------------------------------ MedCLIP
@dataclass
class SwinSettings:
    """Swin-T (``microsoft/swin-tiny-patch4-window7-224``), MedCLIP's image tower."""

    embed_dim: int = 96
    depths: List[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: List[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5


@registry.register_vision_encoder("medclip_vit")
class MedCLIPSwin(nn.Module):
    def __init__(self, swin: nn.Module):
        super().__init__()
        self.swin = swin
        config = swin.config
        self.num_features = int(config.embed_dim * 2 ** (len(config.depths) - 1))

    @classmethod
    def build(cls, image_size: int, vision_config: Mapping[str, Any], weights: Optional[str], use_grad_checkpoint: bool, drop_path_rate: float) -> "MedCLIPSwin":
        from transformers import SwinConfig, SwinModel

        if weights and Path(weights).is_dir():
            if vision_config:
                raise ConfigError("model.vision_config must be empty when model.vit_path is an HF Swin folder (its config.json decides)")
            swin = SwinModel.from_pretrained(weights, local_files_only=True, add_pooling_layer=False)
        else:
            settings = validate_section(SwinSettings, vision_config, "model.vision_config")
            config = SwinConfig(image_size=image_size, drop_path_rate=drop_path_rate, **dataclasses.asdict(settings))
            swin = SwinModel(config, add_pooling_layer=False)
        encoder = cls(swin)
        if use_grad_checkpoint:
            encoder.swin.gradient_checkpointing_enable()
        if weights and not Path(weights).is_dir():
            encoder.load_original(read_state_dict(weights, "MedCLIP checkpoint (pytorch_model.bin)"), source=str(weights))
        return encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, (H/32)*(W/32), 8*embed_dim]`` patch tokens."""
        dtype = self.swin.embeddings.patch_embeddings.projection.weight.dtype
        return self.swin(pixel_values=pixel_values.to(dtype)).last_hidden_state

    def _uses_new_names(self) -> bool:
        return any(".attention.q_proj." in k for k in self.swin.state_dict())

    def from_original(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        converted, dropped = key_maps.medclip_to_ours(state, new_swin_names=self._uses_new_names())
        key_maps.log_dropped(dropped, "MedCLIP checkpoint")
        return {f"swin.{k}": v for k, v in converted.items()}

    def to_original(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return key_maps.ours_to_medclip(key_maps.strip_prefix(state, "swin."))

    def load_original(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        load_exact(self, self.from_original(state), source)
