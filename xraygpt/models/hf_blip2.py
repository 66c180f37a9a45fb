"""Our MiniGPT-4 / XrayGPT model as a transformers ``Blip2ForConditionalGeneration`` folder.

Why: serving engines and the wider HF tooling know BLIP-2 (vision tower -> Q-Former ->
projection -> causal LM), and our parts already are transformers classes, so the export
is a rename table plus configs::

    visual_encoder.vit.*  -> vision_model.*               (Blip2VisionModel, EVA ViT-g)
    ln_vision.*           -> vision_model.post_layernorm.*
    qformer.*, query_tokens -> qformer.*, query_tokens
    llama_proj.*          -> language_projection.*
    llama_model.*         -> language_model.*             (LLaMA text_config)

What a BLIP-2 config cannot say exactly: ``vision_config.layer_norm_eps`` is shared by the
ViT blocks (1e-6 in EVA) and ``post_layernorm`` (LAVIS ``ln_vision`` uses 1e-5). The blocks
keep 1e-6, so ``post_layernorm`` runs with 1e-6 instead of 1e-5 (difference measured in
docs/serving.md). The image goes where XrayGPT's prompt has it, inside ``<Img>...</Img>``:
the prompt text carries ``num_query_tokens`` image tokens there. The image token is the
tokenizer's ``<unk>`` (LLaMA's byte fallback never produces it from text), so the vocabulary,
the embeddings and the logits stay exactly those of the trained LLM.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from xraygpt.common.errors import ConfigurationError
from xraygpt.common.fileio import atomic_write_json, fsync_dir
from xraygpt.models.checkpoint_io import CheckpointError

logger = logging.getLogger(__name__)

RENAMES = (
    ("visual_encoder.vit.", "vision_model."),
    ("ln_vision.", "vision_model.post_layernorm."),
    ("qformer.", "qformer."),
    ("query_tokens", "query_tokens"),
    ("llama_proj.", "language_projection."),
    ("llama_model.", "language_model."),
)
LORA_MODES = ("merge", "adapter")


def to_blip2_names(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our parameter names -> ``Blip2ForConditionalGeneration``'s; a name no rule knows raises."""
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        rule = next(((old, new) for old, new in RENAMES if key.startswith(old)), None)
        if rule is None:
            unknown.append(key)
        else:
            out[rule[1] + key[len(rule[0]):]] = value
    if unknown:
        raise CheckpointError(f"cannot export {len(unknown)} weights with no BLIP-2 name, e.g. {unknown[:5]}")
    return out


def prompt_layout(model: Any, image_token: str, question: str = "{question}") -> str:
    """XrayGPT's prompt with the image tokens in place: ``###Patient: <Img><unk>x32 </Img> {question} ###Doctor: ``.

    We tokenize the text after the image on its own, so it starts with SentencePiece's word marker; in one
    string, that marker comes from the space after the image tokens (same ids, tested).
    """
    from xraygpt.models.prompting import IMAGE_PLACEHOLDER, wrap_prompt

    text = wrap_prompt(" " + question, model.config.prompt_template)
    return text.replace(IMAGE_PLACEHOLDER, image_token * model.config.num_query_token + " ")


def blip2_config(model: Any, image_token_id: int):
    from transformers import Blip2Config

    if model.config.vit_model != "eva_clip_g":
        raise ConfigurationError(f"--to hf-blip2 needs model.vit_model: eva_clip_g (BLIP-2's vision tower is a ViT); "
                                 f"this config uses {model.config.vit_model!r}")
    llm = model.llama_model
    text = (llm.get_base_model() if hasattr(llm, "get_base_model") else llm).config
    config = Blip2Config(
        vision_config=model.visual_encoder.vit.config.to_dict(),
        qformer_config=model.qformer.config.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=model.config.num_query_token,
        image_token_index=int(image_token_id),
    )
    config.text_config.pad_token_id = model.tokenizer.pad_token_id
    return config


def _language_model_state(model: Any, lora: str, folder: Path) -> Dict[str, torch.Tensor]:
    """The plain causal LM's weights: LoRA merged in, or the base weights with the adapter saved beside them.

    The model is left as it was (merge -> copy the merged LoRA targets -> unmerge), so a caller can export twice.
    """
    llm = model.llama_model
    if not hasattr(llm, "peft_config"):
        return dict(llm.state_dict())
    if lora == "adapter":
        llm.save_pretrained(str(folder / "lora_adapter"), safe_serialization=True)
        logger.info("LoRA adapter written to lora_adapter/ (apply it to the exported language_model with peft)")
    else:
        logger.info("merging the LoRA adapters into the LLM weights")
        llm.merge_adapter()
    try:
        state = {}
        for key, value in llm.state_dict().items():
            if "lora_" in key:
                continue
            plain = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            state[plain] = value.clone() if lora == "merge" and ".base_layer." in key else value
    finally:
        if lora == "merge":
            llm.unmerge_adapter()
    return state


def _tokenizer_and_processor(model: Any, image_size: int, mean, std, folder: Path) -> Any:
    """Tokenizer with ``image_token`` set, and a ``Blip2Processor`` that leaves the image tokens where the prompt puts them."""
    import tempfile

    from transformers import AutoTokenizer, Blip2Processor, BlipImageProcessor
    from transformers.image_utils import PILImageResampling

    with tempfile.TemporaryDirectory() as plain:
        model.tokenizer.save_pretrained(plain)
        tokenizer = AutoTokenizer.from_pretrained(plain, extra_special_tokens={"image_token": model.tokenizer.unk_token})
    tokenizer.pad_token = model.tokenizer.pad_token
    images = BlipImageProcessor(size={"height": image_size, "width": image_size}, resample=PILImageResampling.BICUBIC,
                                image_mean=list(mean), image_std=list(std), do_convert_rgb=True)
    # num_query_tokens=None: the processor must not prepend image tokens (BLIP-2's default); XrayGPT's prompt holds them.
    processor = Blip2Processor(image_processor=images, tokenizer=tokenizer, num_query_tokens=None)
    processor.save_pretrained(str(folder))
    return tokenizer


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write over a file or a non-empty folder (before minutes of loading)."""
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"{out} is a file; give a folder to export into")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigurationError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")


def export_hf_blip2(model: Any, out: Path, *, image_mean, image_std, lora: str = "merge",
                    dtype: Optional[torch.dtype] = None, overwrite: bool = False, source: str = "") -> Path:
    """Write ``out/`` (config, safetensors, tokenizer, processor, generation config); all or nothing."""
    from transformers import Blip2ForConditionalGeneration, GenerationConfig

    if lora not in LORA_MODES:
        raise ConfigurationError(f"--lora must be one of {LORA_MODES}, got {lora!r}")
    out = Path(out)
    check_target(out, overwrite)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        llm_state = _language_model_state(model, lora, partial)
        tokenizer = _tokenizer_and_processor(model, model.config.image_size, image_mean, image_std, partial)
        config = blip2_config(model, tokenizer.image_token_id)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("llama_model.")}
        state.update({f"llama_model.{k}": v for k, v in llm_state.items()})
        state = to_blip2_names(state)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        config.dtype = next(v.dtype for k, v in state.items() if k.startswith("language_model."))
        with torch.device("meta"):
            hf = Blip2ForConditionalGeneration(config)
        result = hf.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in result.missing_keys if not k.endswith("inv_freq")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"BLIP-2 layout mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        hf.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=300, do_sample=False, num_beams=1,
        )
        hf.save_pretrained(str(partial), safe_serialization=True, max_shard_size="5GB")
        atomic_write_json(partial / "xraygpt_export.json", {
            "format": "hf-blip2", "source_config": source, "lora": lora if hasattr(model.llama_model, "peft_config") else None,
            "image_token": tokenizer.image_token, "image_token_id": tokenizer.image_token_id,
            "num_query_tokens": config.num_query_tokens, "prompt": prompt_layout(model, tokenizer.image_token),
            "stop_strings": [model.config.end_sym],
            "post_layernorm_eps": {"exported": config.vision_config.layer_norm_eps, "xraygpt_ln_vision": 1e-5},
        })
        _readable_by_umask(partial)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("wrote %s (%d tensors)", out, len(state))
    return out


def _readable_by_umask(folder: Path) -> None:
    """Temp-file writers leave 0600 files; a serving engine may run as another user, so use the usual umask."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def read_export_info(folder: Path) -> Dict[str, Any]:
    return json.loads((Path(folder) / "xraygpt_export.json").read_text())
