"""A tiny stand-in model and dataset that follow the model/data contracts, for runner unit tests.

The stand-in keeps the properties that matter to the runner: a frozen encoder
with ``encode_features`` (feature cache), a trainable part, dropout (RNG state
matters for resume), a token-weighted loss with ``num_target_tokens`` (accumulation
and DDP weighting), random augmentation in the dataset, and a ``collater``.

Run as ``python -m tests.train_support --cfg-path X.yaml`` to train with it in a
subprocess (it registers itself, then calls ``xraygpt.train.main``).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn
from torch.utils.data import Dataset

from xraygpt.common.registry import registry

HERE = Path(__file__).resolve().parent
VOCAB = "abcdefghijklmnopqrstuvwxyz "
CAPTIONS = ["heart normal", "left effusion", "right effusion", "small nodule seen", "lungs clear", "pneumothorax"]


class StandInModel(nn.Module):
    """Image -> frozen 'encoder' -> trainable projection -> per-character classifier."""

    def __init__(self, image_size: int = 8, queries: int = 4, width: int = 16, dropout: float = 0.0,
                 train_encoder: bool = False):
        super().__init__()
        self.queries, self.width = queries, width
        self.encoder = nn.Linear(3 * image_size * image_size, queries * width)
        self.encoder.requires_grad_(train_encoder)
        self.llama_proj = nn.Linear(width, 32)
        self.llama_model = nn.Sequential(nn.LayerNorm(32), nn.Dropout(dropout), nn.Linear(32, len(VOCAB)))

    @classmethod
    def from_config(cls, cfg: Any) -> "StandInModel":
        return cls(dropout=float(cfg.get("dropout", 0.0)), train_encoder=bool(cfg.get("train_encoder", False)))

    def encode_qformer(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image.flatten(1)).view(-1, self.queries, self.width)

    # The feature-cache interface (xraygpt.runners.feature_cache.FeatureSource).
    encode_features = encode_qformer

    def feature_tensors(self):
        return list(self.encoder.named_parameters(prefix="encoder"))

    def feature_config(self) -> Dict[str, Any]:
        return {"queries": self.queries, "width": self.width}

    def forward(self, samples: Dict[str, Any]) -> Dict[str, Any]:
        if os.environ.get("STANDIN_STEP_DELAY"):  # lets a test kill a run mid-way
            time.sleep(float(os.environ["STANDIN_STEP_DELAY"]))
        features = samples["image_features"] if "image_features" in samples else self.encode_qformer(samples["image"])
        logits = self.llama_model(self.llama_proj(features.float())).mean(1)  # [B, V]
        targets = [torch.tensor([VOCAB.index(c) for c in caption]) for caption in samples["caption"]]
        per_token = torch.cat([logits[i].expand(len(t), -1) for i, t in enumerate(targets)])
        num_tokens = sum(len(t) for t in targets)
        loss = nn.functional.cross_entropy(per_token, torch.cat(targets).to(logits.device))
        return {"loss": loss, "num_target_tokens": torch.tensor(num_tokens)}

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}


class StandInDataset(Dataset):
    """Deterministic images; random noise augmentation when ``augment``; ``bad`` indices fail to load."""

    def __init__(self, size: int, offset: int, augment: bool, bad: List[int]):
        self.size, self.offset, self.augment, self.bad = size, offset, augment, set(bad)
        self.annotation = [{"caption": CAPTIONS[(offset + i) % len(CAPTIONS)]} for i in range(size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if index in self.bad:
            raise OSError(f"cannot read image standin_{index}.png")
        generator = torch.Generator().manual_seed(self.offset + index)
        caption = self.annotation[index]["caption"]
        image = torch.randn(3, 8, 8, generator=generator) + CAPTIONS.index(caption)
        if self.augment:
            image = image + 0.1 * torch.randn(3, 8, 8)
        return {"image": image, "prompt": "describe", "caption": caption, "image_id": f"standin_{index}"}

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch: Dict[str, Any] = {key: [s[key] for s in samples] for key in samples[0]}
        batch["image"] = torch.stack(batch["image"])
        return batch


class StandInBuilder:
    DATASET_CONFIG_DICT = {"default": str(HERE / "fixtures" / "train_standin_defaults.yaml")}

    def __init__(self, cfg: Any, on_bad_sample: str = "error"):
        self.cfg = cfg

    def build_datasets(self) -> Dict[str, Dataset]:
        bad = list(self.cfg.get("bad_indices", []))
        return {
            "train": StandInDataset(int(self.cfg.train_size), 0, bool(self.cfg.get("augment", False)), bad),
            "val": StandInDataset(int(self.cfg.val_size), 1000, False, []),
        }


BASE_CONFIG = {
    "model": {"arch": "standin"},
    "datasets": {"standin_toy": {"augment": True}},
    "run": {
        "task": "image_text_pretrain", "device": "cpu", "init_lr": 0.01, "min_lr": 0.001, "warmup_steps": 2,
        "max_epoch": 2, "batch_size_train": 4, "batch_size_eval": 4, "log_freq": 1, "weight_decay": 0.01,
        "valid_splits": ["val"], "job_id": "job",
    },
}


def write_config(folder: Path, run: Dict[str, Any] | None = None, model: Dict[str, Any] | None = None,
                 dataset: Dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
    """A stand-in job config under ``folder`` (outputs in ``folder/out``), with overrides."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(BASE_CONFIG, {"run": {"output_dir": str(folder / "out"), **(run or {})},
                                        "model": model or {}, "datasets": {"standin_toy": dataset or {}}})
    path = folder / name
    OmegaConf.save(cfg, path)
    return path


def train_in_process(config_path: Path, *options: str) -> Dict[str, Any]:
    from xraygpt.common.config import Config
    from xraygpt.train import run_training

    return run_training(Config({"cfg_path": str(config_path), "options": list(options)}))


def final_weights(job_dir: Path) -> Dict[str, torch.Tensor]:
    from xraygpt.common.checkpointing import list_checkpoints, load_checkpoint

    return load_checkpoint(list_checkpoints(job_dir / "checkpoints")[-1])["weights"]


def register() -> None:
    if "standin" not in registry.names("model"):
        registry.register_model("standin")(StandInModel)
        registry.register_builder("standin_toy")(StandInBuilder)


register()

if __name__ == "__main__":
    from xraygpt.common.cli import run_cli
    from xraygpt.train import main

    run_cli(lambda: main(sys.argv[1:]))
