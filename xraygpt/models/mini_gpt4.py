"""MiniGPT-4 / XrayGPT: image -> vision encoder -> ln_vision -> Q-Former -> llama_proj -> LLM.

Semantics follow the original ``MiniGPT4`` exactly for one sample (see
:mod:`xraygpt.models.prompting`); unlike it, batches of any size with a
different prompt per sample are supported, for training and for generation.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from xraygpt.common.errors import ConfigurationError, DataError
from xraygpt.common.registry import registry
from xraygpt.models import key_maps
from xraygpt.models.caption_loss import caption_lm_loss
from xraygpt.models.checkpoint_io import (
    CheckpointError,
    check_shapes,
    read_state_dict,
    save_original_pth,
    save_safetensors,
    skipped_init,
)
from xraygpt.models.graph_decoding import GraphedCall
from xraygpt.models.answer_text import clean_answer, run_in_thread, stream_until, strip_leading_special, trim_generated
from xraygpt.models.llm import apply_lora, load_language_model, load_tokenizer, resolve_dtype
from xraygpt.common.schema import Source
from xraygpt.models.model_config import MiniGPT4Config, model_config_from
from xraygpt.models.prompting import (
    TokenBatch,
    build_generation_batch,
    build_train_batch,
    read_prompt_file,
    wrap_prompt,
    wrap_study_prompt,
)
from xraygpt.models.qformer import build_qformer, init_query_tokens
from xraygpt.models.regional_compile import compile_decoder_layers
from xraygpt.models.vision_encoders import FP32LayerNorm

logger = logging.getLogger(__name__)

# Buffers the original checkpoints carry that our modules compute themselves.
_IGNORED_BUFFERS = (
    key_maps.Drop(r"^Qformer\.bert\.embeddings\.position_ids$", "Q-Former position-id buffers"),
    key_maps.Drop(r"^llama_model\..*rotary_emb\.inv_freq$", "LLaMA rotary inv_freq buffers"),
)


@registry.register_model("mini_gpt4", aliases=("xraygpt",))
class MiniGPT4(nn.Module):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_vicuna": "configs/models/xraygpt.yaml",
        "tiny": "configs/models/xraygpt_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "pretrain_vicuna"

    def __init__(self, cfg: MiniGPT4Config):
        super().__init__()
        self.config = cfg
        missing = cfg.missing_files()
        if missing:  # all at once, before minutes of building
            raise CheckpointError("files not found (docs/model.md says where each goes): " + "; ".join(missing))
        encoder_cls = registry.get_vision_encoder_class(cfg.vit_model)
        self.visual_encoder = encoder_cls.build(
            cfg.image_size, cfg.vision_config, cfg.vit_path, cfg.use_grad_checkpoint, cfg.drop_path_rate
        )
        self.visual_encoder.to(resolve_dtype(cfg.vit_precision))
        self.ln_vision = FP32LayerNorm(self.visual_encoder.num_features, eps=1e-5)
        with skipped_init(bool(cfg.q_former_model)):  # load_blip2 checks that it sets every Q-Former weight
            self.qformer = build_qformer(cfg.qformer_config, self.visual_encoder.num_features)
        self.query_tokens = init_query_tokens(cfg.num_query_token, self.qformer)
        if cfg.q_former_model:
            self.load_blip2(cfg.q_former_model)

        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.llama_model)
        self.llama_model = load_language_model(cfg, vocab_size=len(self.tokenizer))
        self.llama_proj = nn.Linear(self.qformer.config.hidden_size, self.llama_model.config.hidden_size)

        self._freeze(self.visual_encoder, cfg.freeze_vit)
        self._freeze(self.ln_vision, cfg.freeze_vit)
        self._freeze(self.qformer, cfg.freeze_qformer)
        self.query_tokens.requires_grad_(not cfg.freeze_qformer)
        if cfg.lora is not None:
            self.llama_model = apply_lora(self.llama_model, cfg.lora)
        else:
            self._freeze(self.llama_model, cfg.freeze_llm)

        self._llm_compiled = False
        frozen_encoders = cfg.freeze_vit and cfg.freeze_qformer
        self._encoder_graph = GraphedCall(functools.partial(self.encode_qformer, graphed=False)) if frozen_encoders else None
        self.prompt_list: List[str] = read_prompt_file(cfg.prompt_path, cfg.prompt_template) if cfg.prompt_path else []
        if cfg.ckpt:
            self.load_checkpoint(cfg.ckpt)

    @classmethod
    def check_config(cls, cfg: Union[Mapping[str, Any], MiniGPT4Config], source: Source = None) -> MiniGPT4Config:
        """The checked ``model:`` section, without building anything (the config loader calls this)."""
        return model_config_from(cfg, source)

    @classmethod
    def from_config(cls, cfg: Union[Mapping[str, Any], MiniGPT4Config]) -> "MiniGPT4":
        """Build from the ``model:`` section (validated: unknown keys and bad values raise ConfigError)."""
        return cls(model_config_from(cfg))

    # ------------------------------------------------------------ freezing
    @staticmethod
    def _freeze(module: nn.Module, frozen: bool) -> None:
        for param in module.parameters():
            param.requires_grad_(not frozen)
        if frozen:
            module.eval()

    def train(self, mode: bool = True) -> "MiniGPT4":
        """Frozen parts stay in eval mode (no dropout) whatever the runner asks."""
        super().train(mode)
        cfg = self.config
        for module, frozen in (
            (self.visual_encoder, cfg.freeze_vit),
            (self.ln_vision, cfg.freeze_vit),
            (self.qformer, cfg.freeze_qformer),
            (self.llama_model, cfg.freeze_llm and cfg.lora is None),
        ):
            if frozen:
                module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llama_proj.weight.device

    @property
    def llama_tokenizer(self):
        """The original's attribute name."""
        return self.tokenizer

    # ------------------------------------------------------------ image side
    # One path, image -> LLM input:
    #   image [N,3,H,W] --encode_qformer--> Q-Former output [N,Q,D_qformer] (the half a feature cache stores)
    #     --llama_proj (_image_slot_embeds)--> [N,Q,D_llm] --_fill_image_slots--> the prompt's token embeddings.
    # encode_img is the original API over the first two steps.
    def encode_qformer(self, image: torch.Tensor, *, graphed: bool = True) -> torch.Tensor:
        """``[B, 3, H, W]`` -> Q-Former last hidden state ``[B, num_query_token, D_qformer]``.

        Frozen parts run without autograd, so their activations are never kept. Frozen on CUDA, the
        call is replayed from a CUDA graph per batch shape (graph_decoding.GraphedCall): ~70 Python-driven
        blocks cost more host time than GPU time at small batches. ``graphed=False`` is the eager call the
        graph records.
        """
        image = image.to(self.device)
        if graphed and image.is_cuda and self._encoder_graph is not None:
            return self._encoder_graph(image).clone()
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and not self.config.freeze_vit):
            image_embeds = self.ln_vision(self.visual_encoder(image))
        with torch.set_grad_enabled(grad and not self.config.freeze_qformer):
            query = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
            return self.qformer(query_embeds=query, encoder_hidden_states=image_embeds).last_hidden_state

    # What a frozen-feature cache needs (xraygpt.runners.feature_cache.FeatureSource): the cacheable half of
    # the image path, the weights it reads and the settings that shape it.
    FEATURE_CONFIG_KEYS = ("vit_model", "vit_path", "image_size", "vit_precision", "vision_config", "q_former_model",
                           "qformer_config", "num_query_token")

    def encode_features(self, image: torch.Tensor) -> torch.Tensor:
        """The cache's name for :meth:`encode_qformer` (what it stores, and what ``image_features`` hold)."""
        return self.encode_qformer(image)

    def feature_tensors(self) -> List[Tuple[str, torch.Tensor]]:
        """Every weight and buffer :meth:`encode_features` reads: all but ``llama_proj`` and the LLM."""
        later = {id(t) for module in (self.llama_proj, self.llama_model)
                 for t in [*module.parameters(), *module.buffers()]}
        return [(name, t) for name, t in [*self.named_parameters(), *self.named_buffers()] if id(t) not in later]

    def feature_config(self) -> Dict[str, Any]:
        """The settings that shape the features (part of a cache's fingerprint)."""
        return {key: getattr(self.config, key) for key in self.FEATURE_CONFIG_KEYS}

    def encode_img(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(inputs_llama [B, Q, D_llm], atts_llama [B, Q])`` as in the original."""
        inputs_llama = self._image_slot_embeds(image, None)
        return inputs_llama, torch.ones(inputs_llama.shape[:-1], dtype=torch.long, device=inputs_llama.device)

    def _image_slot_embeds(self, images: Optional[torch.Tensor], features: Optional[torch.Tensor]) -> torch.Tensor:
        """``llama_proj`` of the Q-Former output ``[N, Q, D_llm]``: from cached ``features`` when given, else
        computed from ``images``."""
        if features is None:
            if images is None:
                raise KeyError("samples need 'image' [B,3,H,W] or 'image_features' [B,Q,D] (cached Q-Former outputs)")
            features = self.encode_qformer(images)
        else:
            expected = (self.config.num_query_token, self.qformer.config.hidden_size)
            if tuple(features.shape[1:]) != expected:
                raise ValueError(f"image_features must be [B, {expected[0]}, {expected[1]}] (Q-Former outputs), got {list(features.shape)}")
        return self.llama_proj(features.to(device=self.device, dtype=self.llama_proj.weight.dtype))

    def _image_counts(self, counts: Optional[Any], num_images: int, batch_size: int) -> Optional[List[int]]:
        """Images per sample (None: one each); studies above ``model.max_images`` are refused."""
        if counts is None and batch_size == 1 and num_images > 1:
            counts = [num_images]  # one prompt with all of them (e.g. a chat about a study)
        if counts is None:
            if num_images != batch_size:
                raise ValueError(f"{batch_size} prompts for {num_images} images (studies of several images need image_counts)")
            return None
        counts = [int(c) for c in counts]
        if len(counts) != batch_size or sum(counts) != num_images or min(counts) < 1:
            raise ValueError(f"image_counts {counts} do not fit {num_images} images for {batch_size} samples")
        if max(counts) > self.config.max_images:
            raise DataError(
                f"a sample has {max(counts)} images but model.max_images is {self.config.max_images}; "
                "raise model.max_images (each image adds num_query_token tokens) or give fewer views"
            )
        return counts

    def _wrap(self, prompt: str, count: Optional[int], views: Optional[Sequence[Optional[str]]]) -> str:
        if count is None:
            return wrap_prompt(prompt, self.config.prompt_template)
        return wrap_study_prompt(prompt, self.config.prompt_template, count, views, self.config.view_template)

    def _fill_image_slots(self, batch: TokenBatch, image_embeds: torch.Tensor) -> torch.Tensor:
        """The batch's token embeddings with its image slots replaced by ``image_embeds`` (row-major order)."""
        embed_tokens = self.llama_model.get_input_embeddings()
        embeds = embed_tokens(batch.input_ids.to(self.device))
        mask = batch.image_mask.to(self.device).unsqueeze(-1)
        return embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))

    # --------------------------------------------------------------- training
    def _training_prompts(self, samples: Mapping[str, Any], batch_size: int,
                          counts: Optional[List[int]] = None) -> List[str]:
        prompts = samples.get("prompt")
        if prompts is None:
            if counts is not None:
                raise KeyError("studies of several images need a 'prompt' per sample (prompt-file lines hold one image)")
            if not self.prompt_list:
                raise KeyError("samples have no 'prompt' and model.prompt_path is not set: give one of them")
            return [random.choice(self.prompt_list) for _ in range(batch_size)]
        if isinstance(prompts, str):
            prompts = [prompts] * batch_size
        if len(prompts) != batch_size:
            raise ValueError(f"{len(prompts)} prompts for {batch_size} images")
        views = samples.get("views") or [None] * batch_size
        return [self._wrap(p, None if counts is None else counts[i], views[i]) for i, p in enumerate(prompts)]

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """``{"loss": mean NLL over all caption tokens of the batch, "num_target_tokens": n}``.

        The mean is token-weighted, i.e. ``sum_i n_i * loss_i / sum_i n_i`` over the samples.
        """
        image_embeds = self._image_slot_embeds(samples.get("image"), samples.get("image_features"))
        captions = samples["caption"]
        counts = self._image_counts(samples.get("image_counts"), image_embeds.shape[0], len(captions))
        batch = build_train_batch(
            self.tokenizer,
            self._training_prompts(samples, len(captions), counts),
            captions,
            self.config.num_query_token,
            self.config.end_sym,
            self.config.max_txt_len,
            counts,
        )
        inputs_embeds = self._fill_image_slots(batch, image_embeds)
        if self.config.compile_llm and inputs_embeds.is_cuda and not self._llm_compiled:
            self._llm_compiled = compile_decoder_layers(self.llama_model) > 0
        # Only caption positions go through the LM head (same loss as labels=, less work and memory).
        loss = caption_lm_loss(self.llama_model, inputs_embeds, batch.attention_mask.to(self.device),
                               batch.labels.to(self.device), fused=self._llm_compiled)
        return {"loss": loss, "num_target_tokens": torch.tensor(batch.num_target_tokens)}

    # ------------------------------------------------------------- generation
    def prepare_generation_inputs(
        self,
        images: Optional[torch.Tensor],
        prompts: Sequence[str],
        image_features: Optional[torch.Tensor] = None,
        apply_template: bool = True,
        image_counts: Optional[Sequence[int]] = None,
        views: Optional[Sequence[Optional[Sequence[str]]]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(inputs_embeds [B,T,D], attention_mask [B,T])`` of the generation context.

        ``prompts`` are user prompts put into the template, or (``apply_template=False``)
        full context strings with one ``<ImageHere>`` per image, e.g. a conversation history.
        For studies, ``images`` holds every sample's images one after the other, ``image_counts``
        how many each sample has and ``views`` their view names (optional).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        image_embeds = self._image_slot_embeds(images, image_features)
        counts = self._image_counts(image_counts, image_embeds.shape[0], len(prompts))
        views = list(views) if views is not None else [None] * len(prompts)
        if apply_template:
            texts = [self._wrap(p, None if counts is None else counts[i], views[i]) for i, p in enumerate(prompts)]
        else:
            texts = list(prompts)
        batch = build_generation_batch(self.tokenizer, texts, self.config.num_query_token, counts)
        return self._fill_image_slots(batch, image_embeds), batch.attention_mask.to(self.device)

    def _generation_kwargs(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {"max_new_tokens": 300, "num_beams": 1, "do_sample": False}
        kwargs.update(overrides)
        stops = kwargs.pop("stop_strings", [self.config.end_sym])
        if stops:
            kwargs.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        return kwargs

    def _decode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """New token ids ``[B, N]`` (rows that stopped early are padded with EOS).

        The seam for the CUDA fast path: ``model.use_fast_generation`` routes here
        to ``xraygpt.models.graph_decoding.generate(model, inputs_embeds, attention_mask, **kwargs)``.
        """
        from xraygpt.models import graph_decoding

        cancel = kwargs.pop("cancel", None)
        if self.config.use_fast_generation:
            return graph_decoding.generate(self, inputs_embeds, attention_mask, cancel=cancel, **kwargs)
        return self.llama_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         **graph_decoding.with_cancel_criterion(kwargs, cancel))

    @torch.no_grad()
    def warm_up(self, batch_size: int = 1, prompt: str = "Describe the given chest x-ray image in detail.",
                generation_kwargs: Sequence[Mapping[str, Any]] = ({},), cache_len: Optional[int] = None) -> float:
        """Pay the first-request costs now (CUDA only; seconds taken): graphed image encoder, decode captures.

        ``generation_kwargs`` are the decode settings to capture (each is a separate captured step);
        ``cache_len`` is the longest prompt + answer to serve without a new capture (default: the LLM window
        at batch 1, for a chat; this prompt + ``max_new_tokens`` otherwise).
        """
        if self.device.type != "cuda" or not self.config.use_fast_generation:
            return 0.0
        from xraygpt.models import graph_decoding

        started = time.perf_counter()
        image = torch.randn(batch_size, 3, self.config.image_size, self.config.image_size, device=self.device)
        for _ in range(2):  # the second call captures the frozen encoder's graph
            embeds, _mask = self.prepare_generation_inputs(image, [prompt] * batch_size)
        settings = [self._generation_kwargs(dict(kw)) for kw in generation_kwargs]
        for kw in settings:
            for name in ("stop_strings", "tokenizer"):
                kw.pop(name, None)
        generator = graph_decoding.get_fast_generator(self.llama_model)
        if cache_len is None:  # as a request computes it, with the prompt left-padded to the prompt multiple
            multiple = generator.prompt_len_multiple
            window = int(getattr(self.llama_model.config, "max_position_embeddings", 2048))
            longest = max(int(kw.get("max_new_tokens", 300)) for kw in settings)
            cache_len = window + multiple if batch_size == 1 else -(-embeds.shape[1] // multiple) * multiple + longest
        generator.warm_up(batch_size, cache_len, settings)
        seconds = time.perf_counter() - started
        logger.info("warm-up at batch %d: %.1f s (decode steps captured for a %d-token cache, %d setting(s))",
                    batch_size, seconds, cache_len, len(settings))
        return seconds

    @torch.no_grad()
    def generate(
        self,
        images: Optional[torch.Tensor],
        prompts: Union[str, Sequence[str]],
        *,
        image_features: Optional[torch.Tensor] = None,
        apply_template: bool = True,
        return_ids: bool = False,
        image_counts: Optional[Sequence[int]] = None,
        views: Optional[Sequence[Optional[Sequence[str]]]] = None,
        **generation_kwargs: Any,
    ) -> Union[List[str], Tuple[List[str], List[torch.Tensor]]]:
        """Answers for a batch of images and per-sample prompts.

        ``generation_kwargs`` go to transformers ``generate`` (``max_new_tokens``,
        ``num_beams``, ``do_sample``, ``top_p``, ``temperature``, ``repetition_penalty``, ...);
        decoding stops per sample at ``end_sym`` (``stop_strings=[]`` disables that).
        With ``return_ids`` the new token ids of each sample (up to its stop) come too.
        Studies: see :meth:`prepare_generation_inputs` for ``image_counts`` and ``views``.
        """
        inputs_embeds, attention_mask = self.prepare_generation_inputs(
            images, prompts, image_features, apply_template, image_counts, views
        )
        outputs = self._decode(inputs_embeds, attention_mask, **self._generation_kwargs(generation_kwargs))
        ids = [
            strip_leading_special(trim_generated(row, self.tokenizer.eos_token_id), self.tokenizer.unk_token_id, self.tokenizer.bos_token_id)
            for row in outputs.cpu()
        ]
        texts = [clean_answer(self.tokenizer.decode(row, skip_special_tokens=True), self.config.end_sym) for row in ids]
        return (texts, ids) if return_ids else texts

    def stream_generate(
        self,
        image: Optional[torch.Tensor],
        prompt: str,
        *,
        image_features: Optional[torch.Tensor] = None,
        apply_template: bool = True,
        **generation_kwargs: Any,
    ) -> Iterator[str]:
        """Yield the answer for one image piece by piece (for the demo); ``end_sym`` is never shown."""
        from transformers import TextIteratorStreamer

        with torch.no_grad():
            inputs_embeds, attention_mask = self.prepare_generation_inputs(image, [prompt], image_features, apply_template)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        kwargs = self._generation_kwargs(generation_kwargs)

        def decode() -> None:
            with torch.no_grad():
                self._decode(inputs_embeds, attention_mask, streamer=streamer, **kwargs)

        yield from stream_until(run_in_thread(decode, streamer), self.config.end_sym)

    # ------------------------------------------------ what sharding and planning need
    # xraygpt.runners.fsdp, .memory_plan and .distributed_checkpoint reach the model's parts only through
    # these (a model without them trains with run.strategy: ddp); the parts' names stay in this class.
    def language_model(self) -> nn.Module:
        """The LLM (peft-wrapped under LoRA): FSDP makes each of its decoder layers a unit, the rest the root."""
        return self.llama_model

    def frozen_image_parts(self) -> Dict[str, Union[nn.Module, nn.Parameter]]:
        """The image side before ``llama_proj``, by attribute name: FSDP leaves its frozen weights out of the
        shards (one copy per process) unless ``run.fsdp_shard_frozen``."""
        return {"visual_encoder": self.visual_encoder, "ln_vision": self.ln_vision, "qformer": self.qformer,
                "query_tokens": self.query_tokens}

    def image_encoders(self) -> List[nn.Module]:
        """The image side's large blocks, each its own FSDP unit under ``run.fsdp_shard_frozen``."""
        return [self.visual_encoder, self.qformer]

    def parameter_role(self, name: str) -> str:
        """How a parameter is loaded, for the memory plan: ``"llm"`` (in ``model.llm_dtype``: the LLM's own
        weights), ``"vision"`` (in ``model.vit_precision``) or ``"other"`` (fp32: ln_vision, the Q-Former, the
        query tokens, ``llama_proj`` and LoRA adapters)."""
        if name.startswith("llama_model.") and "lora_" not in name:
            return "llm"
        if name.startswith("visual_encoder."):
            return "vision"
        return "other"

    @classmethod
    def build_on_meta_device(cls, model_cfg: Union[Mapping[str, Any], MiniGPT4Config]) -> "MiniGPT4":
        """The configured model with every weight on the meta device, for ``train.py --dry-run``: no weight
        file is read (the LLM's architecture comes from its ``config.json``, the vocabulary from the tokenizer)."""
        cfg = model_config_from(model_cfg)
        llama_config = cfg.llama_config
        if cfg.llama_model:
            path = Path(cfg.llama_model) / "config.json"
            if not path.is_file():
                raise ConfigurationError(f"model.llama_model: {path} not found; the dry run reads the LLM's "
                                         "architecture from it")
            llama_config = json.loads(path.read_text(encoding="utf-8"))
        vit_path = cfg.vit_path if cfg.vit_path and Path(cfg.vit_path).is_dir() else None  # an HF folder: its config
        blank = dataclasses.replace(cfg, vit_path=vit_path, q_former_model=None, ckpt=None, llama_model=None,
                                    llama_config=llama_config, tokenizer=cfg.tokenizer or cfg.llama_model,
                                    low_resource=False)
        with torch.device("meta"):
            return cls(blank)

    # ------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    @staticmethod
    def _qformer_side(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if k.startswith(("qformer.", "ln_vision.")) or k == "query_tokens"}

    @staticmethod
    def _llm_side(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``llama_proj`` and the LLM (LoRA adapters too): the same names in the original."""
        return {k: v for k, v in state.items() if k.startswith(("llama_proj.", "llama_model."))}

    def to_original_names(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Our parameter names -> the original MiniGPT-4 ``state_dict`` names."""
        out: Dict[str, torch.Tensor] = {}
        out.update(key_maps.ours_to_qformer(self._qformer_side(state)))
        vision = key_maps.strip_prefix(state, "visual_encoder.")
        out.update(key_maps.with_prefix(self.visual_encoder.to_original(vision), "visual_encoder."))
        out.update(self._llm_side(state))
        return out

    @classmethod
    def original_checkpoint_names(cls, weights: Mapping[str, torch.Tensor], source: str = "these weights"
                                  ) -> Dict[str, torch.Tensor]:
        """:meth:`to_original_names` without a built model (the sharded-checkpoint export): for every part but
        the vision encoder, whose original names depend on the encoder type; its weights raise."""
        if any(k.startswith("visual_encoder.") for k in weights):
            raise CheckpointError(
                f"{source} trains the vision encoder, whose original names depend on the encoder type: load "
                f"the safetensors export into the model and call {cls.__name__}.save_checkpoint(..., original_pth=...)"
            )
        return {**cls._llm_side(weights), **key_maps.ours_to_qformer(cls._qformer_side(weights))}

    def from_original_names(self, state: Mapping[str, torch.Tensor], source: str) -> Tuple[Dict[str, torch.Tensor], Counter]:
        """Original MiniGPT-4 names -> ours, plus counts of what was dropped on purpose; unknown keys raise."""
        dropped: Counter = Counter()
        kept: Dict[str, torch.Tensor] = {}
        for key, value in state.items():
            drop = next((d for d in _IGNORED_BUFFERS if d.matches(key)), None)
            if drop:
                dropped[drop.why] += 1
            else:
                kept[key] = value
        out = self._llm_side(kept)
        qformer_part = {k: v for k, v in kept.items() if k.startswith(("Qformer.", "ln_vision.")) or k == "query_tokens"}
        converted, qdropped = key_maps.qformer_to_ours(qformer_part)
        out.update(converted)
        vision = key_maps.strip_prefix(kept, "visual_encoder.")
        if vision:
            out.update(key_maps.with_prefix(self.visual_encoder.from_original(vision), "visual_encoder."))
        unknown = sorted(set(kept) - set(qformer_part) - {k for k in kept if k.startswith(("llama_proj.", "llama_model.", "visual_encoder."))})
        if unknown:
            raise CheckpointError(f"{source}: unknown keys {unknown[:8]}; this is not a MiniGPT-4/XrayGPT checkpoint")
        return out, dropped + qdropped

    def load_blip2(self, path: str) -> None:
        """Q-Former, query tokens and ln_vision from a LAVIS BLIP-2 checkpoint."""
        state, dropped = key_maps.qformer_to_ours(read_state_dict(path, "BLIP-2 Q-Former weights (blip2_pretrained_flant5xxl.pth)"))
        key_maps.log_dropped(dropped, str(path))
        needed = {"query_tokens"} | {f"ln_vision.{k}" for k in self.ln_vision.state_dict()} | {f"qformer.{k}" for k in self.qformer.state_dict()}
        missing = sorted(needed - set(state))
        if missing:
            raise CheckpointError(f"{path}: missing {len(missing)} Q-Former weights, e.g. {missing[:5]} (num_hidden_layers / cross_attention_freq mismatch?)")
        check_shapes(self, state, str(path))
        self.load_state_dict(state, strict=False)

    def load_checkpoint(self, path: str | Path) -> Dict[str, List[str]]:
        """Load trained weights: our safetensors, or an original ``{"model": ...}`` .pth.

        Logs one line with what was loaded, ignored and left at its initial value; raises when
        ``llama_proj`` (never pretrained elsewhere) is absent, a group is incomplete, a key
        does not belong to this model, or a shape differs.
        """
        path = Path(path)
        raw = read_state_dict(path, "model checkpoint (llama_proj etc.)")
        if path.suffix == ".safetensors":
            state, ignored = raw, Counter()
        else:
            state, ignored = self.from_original_names(raw, str(path))
        own = dict(self.named_parameters())
        unexpected = sorted(set(state) - set(self.state_dict()))
        if unexpected:
            raise CheckpointError(
                f"{path}: {len(unexpected)} keys this model does not have, e.g. {unexpected[:5]} "
                "(LoRA weights without model.lora? a different vision encoder?)"
            )
        check_shapes(self, state, str(path))
        missing_required = sorted(k for k in own if k.startswith("llama_proj.") and k not in state)
        for group in ("lora_", "qformer.", "visual_encoder."):
            present = [k for k in own if group in k and k in state]
            if present:
                missing_required += sorted(k for k in own if group in k and own[k].requires_grad and k not in state)
        if missing_required:
            raise CheckpointError(f"{path}: missing trained weights {missing_required[:6]}; the checkpoint does not fit this config")
        self.load_state_dict(state, strict=False)
        trainable_missing = sorted(k for k, p in own.items() if p.requires_grad and k not in state)
        logger.info(
            "loaded %s: %d tensors (%s); ignored: %s; trainable weights not in the file (kept as initialised): %s; unexpected: none",
            path,
            len(state),
            _summary(sorted(state)),
            ", ".join(f"{n} {why}" for why, n in sorted(ignored.items())) or "none",
            _summary(trainable_missing) or "none",
        )
        return {"loaded": sorted(state), "missing_trainable": trainable_missing, "ignored": dict(ignored)}

    def save_checkpoint(self, path: str | Path, original_pth: Optional[str | Path] = None) -> Path:
        """Trainable weights as safetensors (+ the original ``{"model": ...}`` .pth when asked)."""
        state = self.trainable_state_dict()
        saved = save_safetensors(state, path, metadata={"format": "xraygpt", "arch": "mini_gpt4"})
        if original_pth is not None:
            save_original_pth(self.to_original_names(state), original_pth)
        return saved


def _summary(names: Sequence[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
