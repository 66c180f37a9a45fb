"""Loading the language model and its tokenizer (local files only, never a hub)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from xraygpt.common.config import ConfigError
from xraygpt.models.checkpoint_io import CheckpointError
from xraygpt.models.model_config import LoraSettings, MiniGPT4Config

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bf16 where a GPU exists and fp32 on CPU (CPU half precision is slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return _DTYPES[name]


def load_tokenizer(path: str | Path):
    """A HF tokenizer folder, or a bare SentencePiece ``.model`` file (read as a LLaMA tokenizer).

    As in the original, ``pad_token`` is set to ``eos_token``: padded caption
    positions and any caption token equal to it are excluded from the loss.
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    path = Path(path)
    try:
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        elif path.is_file() and path.suffix == ".model":
            # transformers reads a SentencePiece model only from a folder.
            with tempfile.TemporaryDirectory() as folder:
                shutil.copy(path, Path(folder) / "tokenizer.model")
                tokenizer = LlamaTokenizer.from_pretrained(folder, local_files_only=True)
        else:
            raise CheckpointError(
                f"tokenizer not found at {path}: give the LLM folder (with tokenizer.model / tokenizer.json) "
                "or a SentencePiece .model file in model.tokenizer"
            )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"cannot load the tokenizer from {path}: {exc} (a LLaMA tokenizer.model needs the sentencepiece and protobuf packages)"
        ) from exc
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise CheckpointError(f"tokenizer at {path} defines no BOS/EOS token; the prompt format needs both")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def low_resource_backend(requested: str) -> str:
    """Which int8 backend ``model.low_resource`` uses: torchao when installed (auto), else bitsandbytes."""
    if not torch.cuda.is_available():
        raise RuntimeError("model.low_resource: true (int8 LLM) needs a CUDA GPU and none is visible; set low_resource: false on CPU")
    if requested == "auto":
        requested = "torchao" if _installed("torchao") else "bitsandbytes" if _installed("bitsandbytes") else ""
        if not requested:
            raise RuntimeError(
                "model.low_resource: true needs torchao (pip install 'xraygpt[int8]', i.e. torchao==0.17.0) or "
                "bitsandbytes, and neither is installed; or set low_resource: false"
            )
    if not _installed(requested):
        extra = "pip install 'xraygpt[int8]' (torchao==0.17.0)" if requested == "torchao" else "pip install bitsandbytes"
        raise RuntimeError(f"model.low_resource_backend: {requested}, but {requested} is not installed ({extra}); or set low_resource: false")
    return requested


def _eight_bit_kwargs(device: int) -> dict:
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": device}}


def quantize_int8_weight_only(model: nn.Module, device: torch.device) -> nn.Module:
    """torchao int8 weight-only linears, one decoder block at a time on ``device`` (peak: int8 + one bf16 block).

    Why torchao: it runs wherever torch runs on CUDA (no separate CUDA build like bitsandbytes), and its
    tensors work inside CUDA graphs and torch.compile, so the fast decode path serves the int8 model too.
    """
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig()
    for layer in model.get_decoder().layers:
        layer.to(device)
        quantize_(layer, config)
    model.to(device)
    quantize_(model.lm_head, config)
    return model

def load_language_model(cfg: MiniGPT4Config, vocab_size: int) -> nn.Module:
    """From ``cfg.llama_model`` (a local HF folder, sharded .bin or safetensors) or ``cfg.llama_config`` (random init)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = resolve_dtype(cfg.llm_dtype)
    if cfg.llama_model:
        folder = Path(cfg.llama_model)
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"LLM folder not found or incomplete: {folder} has no config.json. Put the Vicuna weights there "
                "(config.json, tokenizer.model, pytorch_model-*.bin or *.safetensors shards) or point model.llama_model at them"
            )
        kwargs: dict = {"dtype": dtype, "attn_implementation": cfg.attn_implementation, "local_files_only": True}
        backend = low_resource_backend(cfg.low_resource_backend) if cfg.low_resource else None
        if backend == "bitsandbytes":
            kwargs.update(_eight_bit_kwargs(cfg.device_8bit), dtype=torch.float16)
        elif backend == "torchao":
            kwargs.update(dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        if backend == "torchao":
            model = quantize_int8_weight_only(model, torch.device(f"cuda:{cfg.device_8bit}"))
    else:  # MiniGPT4Config guarantees llama_config here
        if cfg.low_resource:
            raise ConfigError("model.low_resource (8-bit) needs pretrained weights in model.llama_model, not llama_config")
        fields: dict = dict(cfg.llama_config)
        fields.setdefault("vocab_size", vocab_size)
        config = AutoConfig.for_model(fields.pop("model_type", "llama"), **fields)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation).to(dtype)
    if model.config.vocab_size < vocab_size:
        raise CheckpointError(f"the tokenizer has {vocab_size} tokens but the LLM only {model.config.vocab_size} embeddings; they do not belong together")
    return model


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap the LLM with peft LoRA adapters (only the adapters train)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError("model.lora needs the peft package (pip install peft)") from exc
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
