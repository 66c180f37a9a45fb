"""Training on several datasets at once: concatenation, or a mixture by ``sample_ratio``.

``datasets: {mimic: {sample_ratio: 3}, openi: {sample_ratio: 1}}`` makes
three of every four training samples come from MIMIC, however large each
set is.  The mixture is a map-style dataset with an exact, shuffled plan
per epoch (``set_epoch``), so it works with any sampler, DataLoader
workers and DistributedSampler, and a seed reproduces it.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from xraygpt.common.registry import registry

logger = logging.getLogger(__name__)


class MixtureDataset(Dataset):
    """``length`` samples per epoch, drawn from ``datasets`` in proportion to ``ratios``.

    Each dataset contributes round(length * share) samples (largest
    remainder, so the counts sum to ``length``), taken from a fresh
    permutation of that dataset (repeated if it is too small), and the
    whole epoch is shuffled.
    """

    def __init__(self, datasets: Sequence[Dataset], ratios: Sequence[float], length: Optional[int] = None, seed: int = 0):
        if len(datasets) != len(ratios) or not datasets:
            raise ValueError(f"need one ratio per dataset, got {len(datasets)} datasets and {len(ratios)} ratios")
        if any(r <= 0 for r in ratios):
            raise ValueError(f"sample_ratio values must be positive, got {list(ratios)}")
        if any(len(d) == 0 for d in datasets):
            raise ValueError("cannot mix an empty dataset")
        self.datasets = list(datasets)
        self.ratios = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
        self.length = int(length) if length is not None else sum(len(d) for d in datasets)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's plan (call it from the runner each epoch, as with DistributedSampler)."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = self._counts()
        sources, indices = [], []
        for k, (dataset, count) in enumerate(zip(self.datasets, counts)):
            repeats = -(-count // len(dataset))  # ceil
            order = np.concatenate([rng.permutation(len(dataset)) for _ in range(max(repeats, 1))])[:count]
            sources.append(np.full(count, k, dtype=np.int64))
            indices.append(order)
        shuffle = rng.permutation(self.length)
        self._source = np.concatenate(sources)[shuffle]
        self._index = np.concatenate(indices)[shuffle]
        self.epoch = epoch

    def _counts(self) -> np.ndarray:
        exact = self.ratios * self.length
        counts = np.floor(exact).astype(np.int64)
        remainder_order = np.argsort(-(exact - counts), kind="stable")
        counts[remainder_order[: self.length - counts.sum()]] += 1
        return counts

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.datasets[int(self._source[index])][int(self._index[index])]

    def __repr__(self) -> str:
        shares = ", ".join(f"{getattr(d, 'name', k)}: {r:.2f}" for k, (d, r) in enumerate(zip(self.datasets, self.ratios)))
        return f"MixtureDataset(length={self.length}, shares={{{shares}}})"


def build_datasets(
    datasets_cfg: Mapping[str, Any], on_bad_sample: str = "error", seed: int = 0
) -> Dict[str, Dataset]:
    """Build every configured dataset and combine them per split.

    Training splits are mixed by ``sample_ratio`` when the datasets set it
    (all or none must), otherwise concatenated; val/test are concatenated.
    """
    per_dataset = {
        name: registry.get_builder_class(name)(section, on_bad_sample=on_bad_sample).build_datasets()
        for name, section in datasets_cfg.items()
    }
    ratios = {name: (section or {}).get("sample_ratio") for name, section in datasets_cfg.items()}
    given = [name for name, ratio in ratios.items() if ratio is not None]
    if given and len(given) != len(ratios):
        missing = sorted(set(ratios) - set(given))
        raise ValueError(f"sample_ratio is set for {given} but not for {missing}: set it for every dataset or none")

    combined: Dict[str, Dataset] = {}
    for split in ("train", "val", "test"):
        parts = {name: splits[split] for name, splits in per_dataset.items() if split in splits}
        if not parts:
            continue
        if len(parts) == 1:
            combined[split] = next(iter(parts.values()))
        elif split == "train" and given:
            combined[split] = MixtureDataset(list(parts.values()), [float(ratios[n]) for n in parts], seed=seed)
        else:
            combined[split] = ConcatDataset(list(parts.values()))
        logger.info("%s split: %s", split, {name: len(ds) for name, ds in parts.items()})
    return combined
