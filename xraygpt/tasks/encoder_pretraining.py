"""Stage 1 of the embedded default: give the tiny model an image path that sees, as real checkpoints do.

XrayGPT starts from encoders that already see (EVA-CLIP or MedCLIP, then a BLIP-2 Q-Former). The tiny
phantom model starts from random init, and trained end to end with the report loss alone its LLM learns
the report language long before the image path carries anything; it then ignores the image slots for good
(docs/training.md has the measurements). This module is the tiny stand-in for that encoder pretraining:
a short supervised pass of ViT + Q-Former on the phantoms' finding labels (a linear head on the mean of the
query outputs, binary cross-entropy), as MedCLIP learns from labels.

The result is written in the original formats, EVA ViT ``.pth`` for ``model.vit_path`` and a LAVIS BLIP-2
``.pth`` (Q-Former, query tokens, ln_vision) for ``model.q_former_model``, so stage 2 (``train.py``) loads
it through the same code as real checkpoints, with the encoders frozen and their features cached.

    python -m xraygpt.tasks.encoder_pretraining --cfg-path train_configs/phantom_tiny.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from xraygpt.common.config import ConfigError
from xraygpt.common.device import pick_device
from xraygpt.common.schema import PretrainSection, with_flags
from xraygpt.models import key_maps

logger = logging.getLogger(__name__)

FINDINGS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation")
"""The phantom labels the head predicts (``labels.json``); "No Finding" is their complement."""


@dataclass
class LabelledImages:
    images: torch.Tensor  # [N, 3, H, W], processed as the model sees them
    labels: torch.Tensor  # [N, len(FINDINGS)] in {0, 1}


def load_labelled_split(labels_file: Path, split: str, processor: Any) -> LabelledImages:
    """Every image of ``split`` in ``labels.json`` (written by the phantom generator) with its finding labels."""
    from xraygpt.datasets.image_io import load_medical_image

    entries = json.loads(Path(labels_file).read_text(encoding="utf-8"))
    chosen = [e for e in entries if e.get("split") == split]
    if not chosen:
        found = sorted({str(e.get("split")) for e in entries})
        raise ValueError(f"{labels_file} has no '{split}' entries (splits present: {found})")
    root = Path(labels_file).parent
    images = torch.stack([processor(load_medical_image(root / e["image"])) for e in chosen])
    labels = torch.tensor([[float(e["labels"][name]) for name in FINDINGS] for e in chosen])
    return LabelledImages(images, labels)


class FindingProbe(nn.Module):
    """The model's image path (ViT, ln_vision, query tokens, Q-Former) and a linear head on the mean query."""

    def __init__(self, model: nn.Module, num_labels: int = len(FINDINGS)):
        super().__init__()
        self.model = model
        self.head = nn.Linear(model.qformer.config.hidden_size, num_labels)

    def image_path_parameters(self) -> List[nn.Parameter]:
        m = self.model
        return [*m.visual_encoder.parameters(), *m.ln_vision.parameters(), *m.qformer.parameters(), m.query_tokens]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.model.encode_qformer(images).mean(dim=1))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        was_training = self.training
        self.eval()
        logits = torch.cat([self(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        self.train(was_training)
        return logits


def finding_f1(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Micro F1 over the findings and F1 of each (0 when a finding is neither predicted nor present)."""
    predicted, truth = logits > 0, labels.bool()
    tp = (predicted & truth).sum(0).float()
    wrong = (predicted ^ truth).sum(0).float()
    per_finding = 2 * tp / (2 * tp + wrong).clamp(min=1)
    micro = 2 * tp.sum() / (2 * tp.sum() + wrong.sum()).clamp(min=1)
    return {"micro_f1": micro.item(), **dict(zip(FINDINGS, per_finding.tolist()))}


def pretrain_image_path(model: nn.Module, train: LabelledImages, settings: PretrainSection, *, seed: int = 0,
                        device: str = "cpu") -> FindingProbe:
    """Train ``model``'s image path in place on ``train``; returns the probe (model + head)."""
    probe = FindingProbe(model, train.labels.shape[1]).to(device)
    images, labels = train.images.to(device), train.labels.to(device)
    positives = labels.sum(0).clamp(min=1)
    pos_weight = ((len(labels) - positives).clamp(min=1) / positives) ** settings.positive_weight_power
    params = probe.image_path_parameters() + list(probe.head.parameters())
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=settings.warmup_fraction)
    sampler = torch.Generator().manual_seed(seed)
    probe.train()
    started = time.perf_counter()
    for step in range(1, settings.steps + 1):
        batch = torch.randint(0, len(labels), (settings.batch_size,), generator=sampler).to(device)
        loss = nn.functional.binary_cross_entropy_with_logits(probe(images[batch]), labels[batch], pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == settings.steps:
            logger.info("encoder pretraining step %d/%d  loss %.4f  %.0f s", step, settings.steps, loss.item(),
                        time.perf_counter() - started)
    probe.eval()
    return probe


def save_original_formats(model: nn.Module, vit_path: Path, qformer_path: Path) -> None:
    """ViT as an EVA state dict; Q-Former + query tokens + ln_vision as a LAVIS BLIP-2 ``{"model": ...}``."""
    from xraygpt.common.fileio import atomic_write_with
    from xraygpt.models.checkpoint_io import save_original_pth

    image_path = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("llama_")}
    original = model.to_original_names(image_path)
    vision = key_maps.strip_prefix(original, "visual_encoder.")
    qformer = {k: v for k, v in original.items() if not k.startswith("visual_encoder.")}
    Path(vit_path).parent.mkdir(parents=True, exist_ok=True)
    Path(qformer_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(vit_path, lambda tmp: torch.save(vision, tmp))
    save_original_pth(qformer, qformer_path)


def build_untrained_model(model_cfg: Any) -> nn.Module:
    """The configured model with its image path at random init (the files stage 1 writes do not exist yet)."""
    from xraygpt.models.mini_gpt4 import MiniGPT4
    from xraygpt.models.model_config import model_config_from

    config = dataclasses.replace(model_config_from(model_cfg), vit_path=None, q_former_model=None, ckpt=None,
                                 freeze_vit=False, freeze_qformer=False, freeze_llm=True)
    return MiniGPT4(config)


def run_encoder_pretraining(cfg: Any, labels_file: Optional[Path] = None,
                            settings: Optional[PretrainSection] = None) -> Dict[str, Any]:
    """Stage 1 for a loaded ``Config``: train on the ``train`` split, score ``val``, write the two files.

    ``settings`` default to the config's ``pretrain:`` section; the seed is ``run.seed`` and the device
    ``run.device`` (``cuda`` falls back to CPU as in training). Targets are ``model.vit_path`` and
    ``model.q_former_model``; ``labels_file`` defaults to ``labels.json`` in the (single) dataset's storage
    folder. Returns the validation scores (also written as ``encoder_pretraining.json`` beside the Q-Former file).
    """
    from xraygpt.common.fileio import atomic_write_text
    from xraygpt.processors.base import build_processor
    from xraygpt.common.seeding import set_seed

    settings = settings or cfg.pretrain
    seed, device = cfg.run.seed, str(pick_device(cfg.run.device))
    model_cfg = cfg.model
    if not model_cfg.vit_path or not model_cfg.q_former_model:
        raise ConfigError("encoder pretraining writes model.vit_path and model.q_former_model: set both in the config")
    dataset_cfg = next(iter(cfg.datasets_cfg.values()))
    labels_file = Path(labels_file or Path(dataset_cfg.build_info.storage) / "labels.json")
    if not labels_file.is_file():
        raise FileNotFoundError(f"finding labels not found at {labels_file}: generate phantoms first "
                                "(python -m xraygpt.datasets.phantoms --out <folder>), which writes labels.json")
    processor = build_processor(dataset_cfg.vis_processor.eval)
    train, valid = (load_labelled_split(labels_file, split, processor) for split in ("train", "val"))
    logger.info("encoder pretraining on %d labelled phantoms (%d for validation): %s",
                len(train.labels), len(valid.labels), settings)
    set_seed(seed)
    model = build_untrained_model(model_cfg)
    probe = pretrain_image_path(model, train, settings, seed=seed, device=device)
    scores = finding_f1(probe.predict(valid.images.to(device)).cpu(), valid.labels)
    logger.info("encoder pretraining, validation finding F1: %s", scores)
    vit_path, qformer_path = Path(model_cfg.vit_path), Path(model_cfg.q_former_model)
    save_original_formats(model, vit_path, qformer_path)
    summary = {"validation": scores, "settings": {**dataclasses.asdict(settings), "seed": seed, "device": device},
               "vit_path": str(vit_path), "q_former_model": str(qformer_path)}
    atomic_write_text(qformer_path.with_name("encoder_pretraining.json"), json.dumps(summary, indent=2))
    logger.info("wrote %s and %s", vit_path, qformer_path)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    from xraygpt.common.cli import setup_logging
    from xraygpt.common.config import Config, add_config_arguments

    parser = argparse.ArgumentParser(description="Pretrain the tiny model's ViT + Q-Former on phantom finding labels "
                                     "and write them where model.vit_path / model.q_former_model point.")
    add_config_arguments(parser)
    parser.add_argument("--labels", type=Path, default=None, help="labels.json (default: in the dataset's storage folder)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: pretrain.steps)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of the one-cycle schedule (default: pretrain.lr)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: pretrain.batch_size)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = Config(args)
    run_encoder_pretraining(cfg, args.labels, with_flags(cfg.pretrain, steps=args.steps, lr=args.lr,
                                                         batch_size=args.batch_size))
    return 0


if __name__ == "__main__":
    from xraygpt.common.cli import run_cli

    run_cli(main)
