"""Frozen-feature cache: compute each image's Q-Former output once, train from disk afterwards.

With the vision encoder and Q-Former frozen and a deterministic image
processor, ``model.encode_features(image)`` never changes during training, yet
it is most of a step's cost.  We compute it once per image (batched, on the
training device) and store it under

    <cache_dir>/<encoder fingerprint>/<ab>/<image content hash>.safetensors

The *content hash* is the SHA-256 of the processed image tensor (so a new
file, a changed processor or image size give new entries); the *encoder
fingerprint* hashes the frozen weights and architecture that produce the
features (so a different checkpoint never reads stale features).  Entries are per
image, so a study's views are cached one by one and an image shared by several
entries (a lateral in two studies) is encoded once.

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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from xraygpt.common.dist_utils import DistInfo, barrier
from xraygpt.runners.data import SKIPPED_KEY, SeededSamples, make_loader
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
    """Load one sample under two seeds: (image differs = random augmentation, text differs = random prompts).

    The first sample that loads is used: bad ones (``None`` under ``on_bad_sample: skip``) are passed over.
    """
    for index in range(len(dataset)):  # type: ignore[arg-type]
        first, second = SeededSamples(dataset, seed)[index], SeededSamples(dataset, seed + 1)[index]
        if first is not None and second is not None:
            break
    else:
        return False, False
    image_differs = not torch.equal(first["image"], second["image"])
    text_differs = {k: v for k, v in first.items() if k != "image"} != {k: v for k, v in second.items() if k != "image"}
    return image_differs, text_differs


def _as_list(samples: List[Any]) -> List[Any]:
    """Collate that keeps the samples as they are (``None`` for a skipped one), in sampler order."""
    return list(samples)


class CachedFeatures(Dataset):
    """The wrapped dataset's samples with ``image_features`` from the cache instead of ``image``."""

    def __init__(self, dataset: Dataset, files: List[Path], texts: Optional[List[Dict[str, Any]]],
                 indices: Optional[List[int]] = None, skipped: int = 0):
        self.dataset, self.files, self.texts = dataset, files, texts
        self.indices = list(range(len(files))) if indices is None else indices
        """Index in ``dataset`` of each cached sample: bad samples (``on_bad_sample: skip``) have no entry."""
        self.skipped = skipped
        """Samples of ``dataset`` left out as bad when the cache was filled."""

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        if self.texts is not None:
            sample = dict(self.texts[index])
        else:  # the text varies between draws (e.g. random prompts): read it fresh, drop the image
            drawn = self.dataset[self.indices[index]]
            if drawn is None:  # became unreadable since the cache was filled (and the policy is skip)
                return None
            sample = {k: v for k, v in drawn.items() if k != "image"}
        path = self.files[index]
        try:
            if isinstance(path, list):  # a study: one cached entry per view, [k, Q, D]
                sample["image_features"] = torch.stack([load_file(str(p))["features"] for p in path])
                sample["num_images"] = len(path)
            else:
                sample["image_features"] = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise FeatureCacheError(f"feature cache entry {path} cannot be read ({exc}); delete it and rerun "
                                    "to recompute it") from None
        return sample

    @staticmethod
    def collater(samples: List[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        kept = [s for s in samples if s is not None]
        if not kept:
            return None
        if any("num_images" in s for s in kept):  # as caption_dataset.collate does for studies
            features = [s["image_features"] if "num_images" in s else s["image_features"][None] for s in kept]
            batch = {key: [s.get(key) for s in kept] for key in kept[0] if key not in ("image_features", "num_images")}
            batch["views"] = [s.get("views") for s in kept]
            batch["image_features"] = torch.cat(features)
            batch["image_counts"] = torch.tensor([len(f) for f in features])
            batch[SKIPPED_KEY] = len(samples) - len(kept)
            return batch
        batch: Dict[str, Any] = {key: [s[key] for s in kept] for key in kept[0]}
        batch[SKIPPED_KEY] = len(samples) - len(kept)
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
        # index -> (content hash, text fields); None for a bad sample skipped under on_bad_sample: skip
        found: Dict[int, Optional[tuple[str, Dict[str, Any]]]] = {}
        computed = reused = 0
        was_training = self.model.training
        self.model.eval()
        loader = make_loader(SeededSamples(dataset, seed), sampler, self.num_workers, False, collate_fn=_as_list)
        for indices, samples in zip(sampler, loader):
            # Samples stay uncollated so each keeps its index, whichever of them were skipped as bad.
            rows = [(index, sample) for index, sample in zip(indices, samples) if sample is not None]
            found.update({index: None for index, sample in zip(indices, samples) if sample is None})
            if not rows:
                continue
            # One entry per image: a study's sample holds [k, 3, H, W] (and its views).
            stacks = [sample["image"] if "views" in sample else sample["image"].unsqueeze(0) for _, sample in rows]
            images = torch.cat(stacks)
            digests = [image_hash(img) for img in images]
            start = 0
            for (index, sample), stack in zip(rows, stacks):
                own = digests[start : start + len(stack)]
                start += len(stack)
                found[index] = (own if "views" in sample else own[0],
                                {k: v for k, v in sample.items() if k != "image" and not torch.is_tensor(v)})
            first_row = {digest: row for row, digest in reversed(list(enumerate(digests)))}  # shared views once
            todo = sorted(row for digest, row in first_row.items() if not self._usable(self._path(digest)))
            reused += len(digests) - len(todo)
            if todo:
                with self.autocast():
                    features = self.model.encode_features(images[todo].to(self._device())).float().cpu()
                for k, row in enumerate(todo):
                    self._write(digests[row], features[k])
                computed += len(todo)
        self.model.train(was_training)
        found = self._gather(found)
        kept = [i for i in range(len(dataset)) if found[i] is not None]
        skipped = len(dataset) - len(kept)
        logger.info("feature cache %s (%s split): %d computed, %d reused by rank %d", self.folder, name, computed,
                    reused, self.dist.rank)
        if skipped:
            logger.warning("feature cache (%s split): %d bad sample(s) left out (run.on_bad_sample: skip; the files "
                           "are named in the warnings above)", name, skipped)
        files = [[self._path(d) for d in found[i][0]] if isinstance(found[i][0], list) else self._path(found[i][0])
                 for i in kept]
        texts = None if text_varies else [found[i][1] for i in kept]
        return CachedFeatures(dataset, files, texts, kept, skipped)

    @staticmethod
    def _usable(path: Path) -> bool:
        """An existing, complete entry; a truncated or empty one is named, deleted and so recomputed."""
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as handle:
                if "features" in handle.keys():
                    return True
            problem = "has no 'features' tensor"
        except (SafetensorError, OSError) as exc:
            problem = f"is truncated or corrupt ({exc})"
        logger.warning("feature cache entry %s %s: deleting it and computing it again", path, problem)
        path.unlink(missing_ok=True)
        return False

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
