"""Frozen-feature cache: compute each image's Q-Former output once, train from disk afterwards.

With the vision encoder and Q-Former frozen and a deterministic image
processor, ``model.encode_qformer(image)`` never changes during training, yet
it is most of a step's cost.  We compute it once per image (batched, on the
training device) and store it under

    <cache_dir>/<encoder fingerprint>/<ab>/<image content hash>.safetensors

The *content hash* is the SHA-256 of the processed image tensor (so a new
file, a changed processor or image size give new entries); the *encoder
fingerprint* hashes the frozen weights and architecture that produce the
features (so a different checkpoint never reads stale features).  Entries are per
image, so a study's views are cached one by one and an image shared by several
entries (a lateral in two studies) is encoded once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from xraygpt.common.dist_utils import DistInfo, barrier
from xraygpt.runners.data import SeededSamples, make_loader
from xraygpt.runners.samplers import ResumableBatchSampler
from xraygpt.common.errors import DataError

logger = logging.getLogger("xraygpt.train")

_LLM_SIDE = ("llama_model", "llama_proj")
"""Sub-modules after the Q-Former: they may train and are not part of the fingerprint."""
_VISUAL_CONFIG_KEYS = ("vit_model", "vit_path", "image_size", "vit_precision", "vision_config", "q_former_model",
                       "qformer_config", "num_query_token")


class FeatureCacheError(DataError):
    """The cache cannot be used with this configuration (and why)."""


def _visual_named_tensors(model: torch.nn.Module) -> List[tuple[str, torch.Tensor]]:
    skip = {id(t) for name in _LLM_SIDE if getattr(model, name, None) is not None
            for t in list(getattr(model, name).parameters()) + list(getattr(model, name).buffers())}
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [(name, t) for name, t in named if id(t) not in skip]


def check_frozen_visual_path(model: torch.nn.Module) -> None:
    trainable = [name for name, t in _visual_named_tensors(model) if getattr(t, "requires_grad", False)]
    if trainable:
        raise FeatureCacheError(
            f"run.cache_visual_features needs a frozen vision encoder and Q-Former, but {len(trainable)} of their "
            f"parameters train (e.g. {trainable[:3]}); set model.freeze_vit and model.freeze_qformer to true "
            "or turn the cache off"
        )


def encoder_fingerprint(model: torch.nn.Module, model_cfg: Any = None) -> str:
    """SHA-256 of the frozen visual weights (names, shapes, dtypes, values) and the model config."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_visual_named_tensors(model), key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(data.shape)}|{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    if model_cfg is not None:
        from omegaconf import OmegaConf

        container = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else model_cfg
        visual = {k: v for k, v in dict(container).items() if k in _VISUAL_CONFIG_KEYS}
        digest.update(json.dumps(visual, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def image_hash(image: torch.Tensor) -> str:
    data = image.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(f"{tuple(data.shape)}".encode() + data.numpy().tobytes()).hexdigest()


def draws_differ(dataset: Dataset, seed: int) -> tuple[bool, bool]:
    """Load sample 0 under two seeds: (image differs = random augmentation, text differs = random prompts)."""
    first, second = SeededSamples(dataset, seed)[0], SeededSamples(dataset, seed + 1)[0]
    image_differs = not torch.equal(first["image"], second["image"])
    text_differs = {k: v for k, v in first.items() if k != "image"} != {k: v for k, v in second.items() if k != "image"}
    return image_differs, text_differs


class CachedFeatures(Dataset):
    """The wrapped dataset's samples with ``image_features`` from the cache instead of ``image``."""

    def __init__(self, dataset: Dataset, files: List[Path], texts: Optional[List[Dict[str, Any]]]):
        self.dataset, self.files, self.texts = dataset, files, texts

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if self.texts is not None:
            sample = dict(self.texts[index])
        else:  # the text varies between draws (e.g. random prompts): read it fresh, drop the image
            sample = {k: v for k, v in self.dataset[index].items() if k != "image"}
        files = self.files[index]
        if isinstance(files, list):  # a study: one cached entry per view, [k, Q, D]
            sample["image_features"] = torch.stack([load_file(str(f))["features"] for f in files])
            sample["num_images"] = len(files)
        else:
            sample["image_features"] = load_file(str(files))["features"]
        return sample

    @staticmethod
    def collater(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        if any("num_images" in s for s in samples):  # as caption_dataset.collate does for studies
            features = [s["image_features"] if "num_images" in s else s["image_features"][None] for s in samples]
            batch = {key: [s.get(key) for s in samples] for key in samples[0] if key not in ("image_features", "num_images")}
            batch["views"] = [s.get("views") for s in samples]
            batch["image_features"] = torch.cat(features)
            batch["image_counts"] = torch.tensor([len(f) for f in features])
            return batch
        batch: Dict[str, Any] = {key: [s[key] for s in samples] for key in samples[0]}
        batch["image_features"] = torch.stack(batch["image_features"])
        return batch


class FeatureCache:
    """Fills the cache for a dataset and returns a :class:`CachedFeatures` view of it."""

    def __init__(self, model: torch.nn.Module, root: Path, fingerprint: str, dist: DistInfo, batch_size: int,
                 num_workers: int = 0, autocast: Any = None):
        self.model, self.dist, self.batch_size, self.num_workers = model, dist, batch_size, num_workers
        self.folder = Path(root) / fingerprint[:32]
        self.autocast = autocast

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    @torch.no_grad()
    def wrap(self, dataset: Dataset, seed: int, name: str) -> CachedFeatures:
        """Encode every not-yet-cached image of ``dataset`` (this rank's share), then view it through the cache."""
        _, text_varies = draws_differ(dataset, seed)
        sampler = ResumableBatchSampler(len(dataset), self.batch_size, rank=self.dist.rank,
                                        world_size=self.dist.world_size, shuffle=False, drop_last=False)
        found: Dict[int, tuple[str, Dict[str, Any]]] = {}
        computed = reused = 0
        was_training = self.model.training
        self.model.eval()
        for indices, batch in zip(sampler, make_loader(SeededSamples(dataset, seed), sampler, self.num_workers, False)):
            digests = [image_hash(img) for img in batch["image"]]  # one per image (a study has several)
            counts = batch.get("image_counts")
            starts = [0, *torch.cumsum(counts, 0).tolist()] if counts is not None else list(range(len(digests) + 1))
            for row, index in enumerate(indices):
                own = digests[starts[row] : starts[row + 1]]
                found[index] = (own if counts is not None else own[0],
                                {k: v[row] for k, v in batch.items() if k != "image" and isinstance(v, list)})
            first_row = {digest: row for row, digest in reversed(list(enumerate(digests)))}
            todo = sorted(row for digest, row in first_row.items() if not self._path(digest).is_file())
            reused += len(digests) - len(todo)
            if todo:
                with self.autocast():
                    features = self.model.encode_qformer(batch["image"][todo].to(self._device())).float().cpu()
                for k, row in enumerate(todo):
                    self._write(digests[row], features[k])
                computed += len(todo)
        self.model.train(was_training)
        found = self._gather(found)
        logger.info("feature cache %s (%s split): %d computed, %d reused by rank %d", self.folder, name, computed,
                    reused, self.dist.rank)
        files = [[self._path(d) for d in found[i][0]] if isinstance(found[i][0], list) else self._path(found[i][0])
                 for i in range(len(dataset))]
        texts = None if text_varies else [found[i][1] for i in range(len(dataset))]
        return CachedFeatures(dataset, files, texts)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _write(self, digest: str, features: torch.Tensor) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
        save_file({"features": features.contiguous()}, str(tmp))
        os.replace(tmp, path)

    def _gather(self, found: Dict[int, Any]) -> Dict[int, Any]:
        """Every rank needs every index's entry; ranks computed disjoint shares."""
        if not self.dist.distributed:
            return found
        import torch.distributed as dist

        parts: List[Optional[Dict[int, Any]]] = [None] * self.dist.world_size
        dist.all_gather_object(parts, found)
        barrier()
        merged: Dict[int, Any] = {}
        for part in parts:
            merged.update(part or {})
        return merged
