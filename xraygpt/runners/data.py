"""Feeding batches to the runner: per-sample seeding, collation, an endless resumable stream."""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from xraygpt.runners.samplers import ResumableBatchSampler


SKIPPED_KEY = "num_skipped"
"""Batch field the data collate fills with the number of bad samples it dropped."""


class SeededSamples(Dataset):
    """Draws each sample under RNG seeded by (seed, epoch, index).

    Random augmentation and random prompt choice then depend only on *which*
    sample of *which* epoch is loaded, never on worker count, prefetching or
    where a resumed run started — the condition for bit-exact resume.  The
    caller's RNG states are restored afterwards, so model-side randomness
    (dropout) is unaffected.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Also re-plans an epoch-dependent dataset (e.g. a sample_ratio mixture)."""
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch * 7_919 + int(index)) % (2**31 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                np.random.seed(sample_seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getattr__(self, name: str) -> Any:  # expose collater, lengths, ... of the wrapped dataset
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_fn_of(dataset: Dataset) -> Callable[[List[Any]], Any]:
    """The dataset's own ``collater`` (as LAVIS datasets have), else the project's sample collate."""
    probe = dataset
    while True:
        if hasattr(probe, "collater"):
            return probe.collater
        if isinstance(probe, ConcatDataset):
            probe = probe.datasets[0]
        elif isinstance(probe, SeededSamples):
            probe = probe.dataset
        elif hasattr(probe, "dataset") and isinstance(getattr(probe, "dataset"), Dataset):
            probe = probe.dataset
        else:
            from xraygpt.datasets import collate  # drops and counts skipped (None) samples

            return collate


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def make_loader(dataset: Dataset, sampler: ResumableBatchSampler, num_workers: int, pin_memory: bool,
                collate_fn: Optional[Callable[[List[Any]], Any]] = None) -> DataLoader:
    """``collate_fn`` defaults to the dataset's own (:func:`collate_fn_of`)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or collate_fn_of(dataset),
        pin_memory=pin_memory,
        # Its own generator: creating an iterator must not draw from the global RNG,
        # or a resumed run's RNG would drift from the uninterrupted one.
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )


class BatchStream:
    """An endless stream of training batches with a resumable position (data epoch, batch)."""

    def __init__(self, dataset: SeededSamples, sampler: ResumableBatchSampler, num_workers: int, pin_memory: bool):
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.data_epoch, self.batch_index = 0, 0
        self.skipped_samples = 0
        """Bad samples skipped under ``run.on_bad_sample: skip`` (this process)."""
        self._iterator: Optional[Iterator[Any]] = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler)

    def position(self) -> Dict[str, int]:
        return {"data_epoch": self.data_epoch, "batch_index": self.batch_index}

    def seek(self, data_epoch: int, batch_index: int) -> None:
        self.data_epoch, self.batch_index = int(data_epoch), int(batch_index)
        self._iterator = None

    def _open(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.data_epoch)
        self.sampler.set_start(self.batch_index)
        self.dataset.set_epoch(self.data_epoch)
        return iter(make_loader(self.dataset, self.sampler, self.num_workers, self.pin_memory))

    def next(self) -> Any:
        """The next batch; a batch whose samples were all skipped as bad is counted and passed over."""
        while True:
            if self.batch_index >= self.batches_per_epoch:
                self.data_epoch, self.batch_index, self._iterator = self.data_epoch + 1, 0, None
            if self._iterator is None:
                self._iterator = self._open()
            batch = next(self._iterator)
            self.batch_index += 1
            if batch is None:
                self.skipped_samples += self.sampler.batch_size
                continue
            if isinstance(batch, dict):
                self.skipped_samples += int(batch.pop(SKIPPED_KEY, 0) or 0)
            return batch
