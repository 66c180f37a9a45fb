"""Typed schema of the ``model:`` section.

The original read every key with ``cfg.get(key, default)``, so a typo such as
``freeze_qfromer`` was silently ignored.  Here the section is merged onto a
dataclass: unknown keys fail with the closest valid name, wrong types fail
with the expected type.  Field names follow the original configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

from omegaconf import DictConfig

from xraygpt.common.config import ConfigError
from xraygpt.common.schema import Source, check_section

T = TypeVar("T")

DEFAULT_PROMPT_TEMPLATE = "###Patient: {} ###Doctor: "
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
LOW_RESOURCE_BACKENDS = ("auto", "torchao", "bitsandbytes")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class MiniGPT4Config:
    arch: str = "mini_gpt4"
    model_type: Optional[str] = None

    # Vision encoder.
    vit_model: str = "eva_clip_g"
    """Registered vision encoder: ``eva_clip_g`` or ``medclip_vit``."""
    vit_path: Optional[str] = None
    """Weights of the vision encoder (``eva_vit_g.pth``, a MedCLIP checkpoint or an HF Swin folder); null = random."""
    image_size: int = 224
    drop_path_rate: float = 0.0
    use_grad_checkpoint: bool = False
    vit_precision: str = "auto"
    """Vision-encoder dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16 (the original's choice)."""
    vision_config: Dict[str, Any] = field(default_factory=dict)
    """Architecture numbers of the encoder (width, depth, ...); empty = the real model's."""
    freeze_vit: bool = True

    # Q-Former.
    q_former_model: Optional[str] = None
    """LAVIS BLIP-2 checkpoint (``blip2_pretrained_flant5xxl.pth``); null = random."""
    qformer_config: Dict[str, Any] = field(default_factory=dict)
    num_query_token: int = 32
    freeze_qformer: bool = True

    # Language model.
    llama_model: Optional[str] = None
    """Local HF folder of the LLM (Vicuna); mutually exclusive with llama_config."""
    llama_config: Optional[Dict[str, Any]] = None
    """LlamaConfig fields of a randomly initialised LLM (tiny test models)."""
    tokenizer: Optional[str] = None
    """Tokenizer folder or SentencePiece ``.model`` file; defaults to llama_model."""
    llm_dtype: str = "auto"
    attn_implementation: str = "sdpa"
    freeze_llm: bool = True
    low_resource: bool = False
    """Load the LLM with int8 weights (CUDA only): torchao weight-only int8, or bitsandbytes 8-bit."""
    low_resource_backend: str = "auto"
    """``auto`` (torchao when installed, else bitsandbytes), ``torchao`` or ``bitsandbytes``."""
    device_8bit: int = 0
    lora: Optional[LoraSettings] = None

    # Prompting and targets.
    prompt_path: Optional[str] = None
    """File of prompts (one per line, each with ``<ImageHere>``) used when a sample has no prompt."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_images: int = 1
    """Most images one sample (a study: frontal + lateral, ...) may bring; each gets num_query_token slots."""
    view_template: str = "{view}: "
    """Text before each image segment of a several-image study when its view is known; '' = no view names."""
    max_txt_len: int = 160
    end_sym: str = "###"

    # Weights of the trained parts (llama_proj, LoRA, ...).
    ckpt: Optional[str] = None
    use_fast_generation: bool = True
    """On CUDA, decode greedy/sampling requests with a static KV cache and a CUDA-graph step
    (xraygpt.models.graph_decoding); beams and CPU use transformers generate. false = always transformers."""
    compile_llm: bool = True
    """On CUDA, torch.compile the LLM's transformer blocks at the first training/eval forward
    (xraygpt.models.regional_compile; one ~10 s compile, ~1.3x faster steps, less activation memory)."""

    def __post_init__(self) -> None:
        if self.llama_model and self.llama_config:
            raise ValueError("set either model.llama_model (a folder) or model.llama_config (a random LLM), not both")
        if not (self.llama_model or self.llama_config):
            raise ValueError("set model.llama_model (a local LLM folder) or model.llama_config (a random tiny LLM)")
        if self.llama_config and not self.tokenizer:
            raise ValueError("model.llama_config needs model.tokenizer (an HF tokenizer folder or a SentencePiece .model file)")
        if self.lora is not None and not self.freeze_llm:
            raise ValueError("model.lora trains adapters on a frozen LLM; keep model.freeze_llm: true with it")
        for key in ("vit_precision", "llm_dtype"):
            if getattr(self, key) not in DTYPE_CHOICES:
                raise ValueError(f"model.{key} must be one of {DTYPE_CHOICES}, got {getattr(self, key)!r}")
        if self.low_resource_backend not in LOW_RESOURCE_BACKENDS:
            raise ValueError(f"model.low_resource_backend must be one of {LOW_RESOURCE_BACKENDS}, got {self.low_resource_backend!r}")
        if self.prompt_template.count("{}") != 1:
            raise ValueError(f"model.prompt_template must contain exactly one '{{}}', got {self.prompt_template!r}")
        if self.max_txt_len < 1 or self.num_query_token < 1:
            raise ValueError("model.max_txt_len and model.num_query_token must be positive")
        if self.max_images < 1:
            raise ValueError(f"model.max_images must be at least 1, got {self.max_images}")
        if self.view_template and "{view}" not in self.view_template:
            raise ValueError(f"model.view_template must contain '{{view}}' (or be ''), got {self.view_template!r}")


    def missing_files(self) -> List[str]:
        """Every configured weight/prompt path that does not exist, described for the user."""
        from pathlib import Path

        checks = [
            ("vit_path", self.vit_path, "vision-encoder weights: eva_vit_g.pth, a MedCLIP checkpoint or an HF Swin folder"),
            ("q_former_model", self.q_former_model, "BLIP-2 Q-Former weights, blip2_pretrained_flant5xxl.pth"),
            ("llama_model", self.llama_model and str(Path(self.llama_model) / "config.json"), "LLM folder with config.json, tokenizer.model and the weight shards"),
            ("tokenizer", self.tokenizer, "HF tokenizer folder or SentencePiece .model file"),
            ("ckpt", self.ckpt, "trained checkpoint (llama_proj ...), .pth or .safetensors"),
            ("prompt_path", self.prompt_path, "prompt file"),
        ]
        return [f"model.{key} -> {path} ({what})" for key, path, what in checks if path and not Path(path).exists()]


def validate_section(schema: Type[T], cfg: Mapping[str, Any] | DictConfig | None, section: str,
                     source: Source = None) -> T:
    """Merge ``cfg`` onto dataclass ``schema``; unknown keys and bad types raise ConfigError."""
    return check_section(schema, cfg, section, source=source, error=ConfigError)


def model_config_from(cfg: Mapping[str, Any] | DictConfig | MiniGPT4Config, source: Source = None) -> MiniGPT4Config:
    if isinstance(cfg, MiniGPT4Config):
        return cfg
    return validate_section(MiniGPT4Config, cfg, "model", source)
