"""Build the model and its eval image processor from a config, for the demo and the batch CLI."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Tuple

import torch

from xraygpt.common.config import Config, ConfigError
from xraygpt.common.device import pick_device  # noqa: F401  (its old home; the demo docs import it from here)
from xraygpt.common.registry import registry

logger = logging.getLogger(__name__)


def eval_processor_config(cfg: Config) -> Mapping[str, Any]:
    """The image processor to run inference with.

    Any ``eval`` processor (datasets first, then the model defaults' ``preprocess``)
    wins over a ``train`` one, which may crop at random.
    """
    sections = [(f"datasets.{name}", d.get("vis_processor")) for name, d in (cfg.config.get("datasets") or {}).items()]
    sections.append(("preprocess", (cfg.config.get("preprocess") or {}).get("vis_processor")))
    for split in ("eval", "train"):
        for where, processors in sections:
            chosen = (processors or {}).get(split)
            if chosen is not None:
                logger.info("image processor from %s.vis_processor.%s: %s", where, split, chosen.get("name"))
                return chosen
    raise ConfigError(
        f"{cfg.cfg_path}: no image processor configured; add preprocess.vis_processor.eval "
        "(e.g. {name: blip2_image_eval, image_size: 224})"
    )


def build_model(cfg: Config, device: torch.device | str) -> Any:
    """The config's model in eval mode on ``device`` (shared by demo, batch CLI and evaluation)."""
    model_cfg = cfg.config.model
    if "arch" not in model_cfg:
        raise ConfigError(f"{cfg.cfg_path}: the model section needs 'arch' (e.g. arch: mini_gpt4)")
    model = registry.get_model_class(model_cfg.arch).from_config(model_cfg)
    return model.to(device).eval()


def load_model_and_processor(cfg: Config, device: torch.device) -> Tuple[Any, Callable]:
    """The config's model in eval mode on ``device``, and its PIL -> tensor processor."""
    from xraygpt.processors.base import build_processor

    processor = build_processor(eval_processor_config(cfg))
    return build_model(cfg, device), processor
