"""Frozen-feature cache: compute each image's Q-Former output once, train from disk afterwards.

With the vision encoder and Q-Former frozen and a deterministic image
processor, ``model.encode_features(image)`` never changes during training, yet
it is most of a step's cost.  We compute it once per image (batched, on the
training device) and store it under

    <cache_dir>/<encoder fingerprint>/<ab>/<image content hash>.safetensors

The *content hash* is the SHA-256 of the processed image tensor (so a new
file, a changed processor or image size give new entries); the *encoder
fingerprint* hashes the frozen weights and architecture that produce the
features (so a different checkpoint never reads stale features).

The cache knows nothing of the model's parts: the model says what to cache
through :class:`FeatureSource`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Tuple

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from xraygpt.common.dist_utils import DistInfo, barrier
from xraygpt.runners.data import SeededSamples, make_loader
from xraygpt.runners.samplers import ResumableBatchSampler
from xraygpt.common.errors import DataError
from xraygpt.common.fileio import atomic_write_with

logger = logging.getLogger("xraygpt.train")

class FeatureSource(Protocol):
    """What a model offers the cache (``MiniGPT4`` and the test stand-in implement it)."""

    def encode_features(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> the features to cache, ``[B, ...]``."""

    def feature_tensors(self) -> List[Tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every weight and buffer ``encode_features`` reads: it must be frozen."""

    def feature_config(self) -> Dict[str, Any]:
        """Settings that shape the features (JSON-able), hashed with the weights."""


class FeatureCacheError(DataError):
    """The cache cannot be used with this configuration (and why)."""


def check_frozen_visual_path(model: FeatureSource) -> None:
    missing = [name for name in FeatureSource.__dict__ if not name.startswith("_") and not hasattr(model, name)]
    if missing:
        raise FeatureCacheError(f"run.cache_visual_features needs model.{', model.'.join(missing)}; "
                                f"{type(model).__name__} has none (turn the cache off)")
    trainable = [name for name, t in model.feature_tensors() if getattr(t, "requires_grad", False)]
    if trainable:
        raise FeatureCacheError(
            f"run.cache_visual_features needs a frozen vision encoder and Q-Former, but {len(trainable)} of their "
            f"parameters train (e.g. {trainable[:3]}); set model.freeze_vit and model.freeze_qformer to true "
            "or turn the cache off"
        )


def encoder_fingerprint(model: FeatureSource) -> str:
    """SHA-256 of the frozen feature weights (names, shapes, dtypes, values) and the feature settings."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.feature_tensors(), key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(data.shape)}|{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    digest.update(json.dumps(model.feature_config(), sort_keys=True, default=str).encode())
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
        sample["image_features"] = load_file(str(self.files[index]))["features"]
        return sample

    @staticmethod
    def collater(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
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
            digests = [image_hash(img) for img in batch["image"]]
            for row, (index, digest) in enumerate(zip(indices, digests)):
                found[index] = (digest, {k: v[row] for k, v in batch.items() if k != "image" and isinstance(v, list)})
            todo = [row for row, digest in enumerate(digests) if not self._path(digest).is_file()]
            reused += len(digests) - len(todo)
            if todo:
                with self.autocast():
                    features = self.model.encode_features(batch["image"][todo].to(self._device())).float().cpu()
                for k, row in enumerate(todo):
                    self._write(digests[row], features[k])
                computed += len(todo)
        self.model.train(was_training)
        found = self._gather(found)
        logger.info("feature cache %s (%s split): %d computed, %d reused by rank %d", self.folder, name, computed,
                    reused, self.dist.rank)
        files = [self._path(found[i][0]) for i in range(len(dataset))]
        texts = None if text_varies else [found[i][1] for i in range(len(dataset))]
        return CachedFeatures(dataset, files, texts)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _write(self, digest: str, features: torch.Tensor) -> None:
        tensors = {"features": features.contiguous()}
        atomic_write_with(self._path(digest), lambda tmp: save_file(tensors, tmp), durable=False)  # a miss recomputes

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
