"""Batch samplers whose order is a pure function of (seed, epoch), so a run can resume mid-epoch.

torch's ``DistributedSampler`` shards well but cannot start mid-epoch or group
by length, so this one builds the *global* batches of an epoch (what a single
process with ``batch_size * world_size`` would see) and hands each rank its
share.  Because every rank derives the same global batches, N processes see
exactly the samples one process sees with the same global batch, and
resuming is "skip the first k batches" without touching the data.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[List[int]]):
    """Shuffled (or ordered) batches of one rank; ``set_epoch`` + ``set_start`` pick the position.

    Args:
        num_samples: dataset length.
        batch_size: per-rank batch size.
        rank / world_size: this process's share of each global batch.
        shuffle: permute with ``torch.Generator().manual_seed(seed + epoch)``.
        drop_last: drop the final incomplete global batch (training keeps batch sizes constant).
        lengths: optional per-sample lengths; when given, batches hold samples of similar
            length (sorted inside shuffled windows of ``group_window`` global batches) and
            the batch order is then shuffled, which cuts padding while staying random.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        lengths: Optional[Sequence[int]] = None,
        group_window: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"got {len(lengths)} lengths for {num_samples} samples")
        global_batch = batch_size * world_size
        if drop_last and num_samples < global_batch:
            raise ValueError(
                f"the training split has {num_samples} samples, fewer than one global batch "
                f"(batch_size_train {batch_size} x {world_size} processes); lower run.batch_size_train"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.lengths = list(lengths) if lengths is not None else None
        self.group_window = group_window
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, batch_index: int) -> None:
        """Skip the first ``batch_index`` batches of the current epoch (used when resuming)."""
        self.start = int(batch_index)

    def _order(self) -> List[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def global_batches(self) -> List[List[int]]:
        """All global batches of the current epoch, before sharding over ranks."""
        order = self._order()
        size = self.batch_size * self.world_size
        if self.lengths is not None:
            window = size * self.group_window
            lengths = self.lengths
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s:s + window], key=lambda j: -lengths[j])]
        batches = [order[s:s + size] for s in range(0, len(order), size)]
        if batches and len(batches[-1]) < size and self.drop_last:
            batches.pop()
        if self.lengths is not None and self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def _shard(self, global_batch: List[int]) -> List[int]:
        return global_batch[self.rank::self.world_size]

    def __iter__(self) -> Iterator[List[int]]:
        for global_batch in self.global_batches()[self.start:]:
            shard = self._shard(global_batch)
            if shard:
                yield shard

    def __len__(self) -> int:
        """Batches per epoch for this rank (ignoring ``start``)."""
        size = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples, size)
        if rest and not self.drop_last and rest > self.rank:
            return full + 1
        return full
