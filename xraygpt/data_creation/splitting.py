"""Seeded sampling and group-level train/val/test splits (a group never spans two splits)."""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence

from xraygpt.data_creation.records import DataCreationError, SourceItem

SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> Dict[str, float]:
    """``"0.8,0.1,0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise DataCreationError(f"--split needs three non-negative fractions train,val,test summing to 1 (train > 0), got {text!r}")
    return dict(zip(SPLITS, values))


def sample_items(items: List[SourceItem], sample_size: Optional[int], seed: int) -> List[SourceItem]:
    """A seeded random subset, kept in source order so outputs are easy to compare."""
    if sample_size is None or sample_size >= len(items):
        return list(items)
    if sample_size <= 0:
        raise DataCreationError(f"--sample-size must be positive, got {sample_size}")
    chosen = set(random.Random(seed).sample(range(len(items)), sample_size))
    return [item for i, item in enumerate(items) if i in chosen]


def split_groups(items: Sequence[SourceItem], fractions: Dict[str, float], seed: int) -> Dict[str, str]:
    """Map each ``group_id`` to a split.

    Groups are shuffled with ``seed`` and cut by the fractions; a split with a non-zero
    fraction gets at least one group when there are enough groups, so tiny datasets
    still have a val and a test set.
    """
    groups = sorted({item.group_id for item in items})
    random.Random(seed).shuffle(groups)
    n = len(groups)
    sizes = {name: int(round(fractions[name] * n)) for name in ("val", "test")}
    for name in ("val", "test"):
        if fractions[name] > 0 and sizes[name] == 0 and n - sum(sizes.values()) > 1:
            sizes[name] = 1
    while n and n - sizes["val"] - sizes["test"] < 1:  # rounding must leave train a group
        sizes["test" if sizes["test"] >= sizes["val"] else "val"] -= 1
    n_train = n - sizes["val"] - sizes["test"]
    assignment = {}
    for index, group in enumerate(groups):
        if index < n_train:
            assignment[group] = "train"
        elif index < n_train + sizes["val"]:
            assignment[group] = "val"
        else:
            assignment[group] = "test"
    return assignment
