"""The one map-style dataset: records -> ``{"image", "prompt", "caption", "image_id", "question"}`` samples.

Bad samples follow ``run.on_bad_sample``: ``error`` raises
:class:`BadSampleError` naming the file, the reason and the fix; ``skip``
logs the file, counts it and returns ``None``, which :func:`collate` drops
and reports in the batch's ``num_skipped``.  Nothing is skipped silently.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from xraygpt.datasets.annotations import Record
from xraygpt.datasets.image_io import ImageLoadError, load_medical_image
from xraygpt.common.errors import DataError

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("error", "skip")


class BadSampleError(DataError, RuntimeError):
    """A sample that cannot be loaded while ``on_bad_sample`` is ``error``."""


def check_policy(on_bad_sample: str) -> str:
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")
    return on_bad_sample


class ImageTextDataset(Dataset):
    """Image + prompt + caption samples from parsed annotation records."""

    def __init__(
        self,
        records: Sequence[Record],
        vis_processor: Optional[Callable] = None,
        text_processor: Optional[Callable] = None,
        on_bad_sample: str = "error",
        name: str = "dataset",
    ):
        self.records = list(records)
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.on_bad_sample = check_policy(on_bad_sample)
        self.name = name
        self.skipped: List[str] = []
        """Files skipped in *this* process (DataLoader workers keep their own; see collate's num_skipped)."""

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        record = self.records[index]
        images = []
        for path in record.images:
            try:
                image = load_medical_image(path)
            except ImageLoadError as exc:
                return self._bad_sample(index, record, exc.reason, path)
            images.append(self.vis_processor(image) if self.vis_processor is not None else image)
        caption = self.text_processor(record.caption) if self.text_processor else record.caption
        # Entries marked ``"task": "vqa"`` are question/answer pairs: evaluation scores them as VQA, not reports.
        question = record.prompt if record.task == "vqa" else None
        sample = {"image": images[0], "prompt": record.prompt, "caption": caption, "image_id": record.image_id,
                  "question": question}
        if record.study_images:  # a study: [k, 3, H, W] and its view names (collate concatenates studies)
            sample.update(image=torch.stack(images), views=list(record.views) or None)
        return sample

    def _bad_sample(self, index: int, record: Record, reason: str, path: Optional[Path] = None) -> None:
        where = f"{self.name}[{index}] ({record.source or 'no source'}) image {path or record.image_path}"
        if self.on_bad_sample == "error":
            raise BadSampleError(
                f"bad sample {where}: {reason}. Fix or remove the entry (check the whole dataset with "
                f"`python -m xraygpt.datasets.validate <folder>`), or set run.on_bad_sample=skip to skip such files"
            )
        self.skipped.append(str(path or record.image_path))
        logger.warning("skipping bad sample %s: %s (%d skipped so far in this process)", where, reason, len(self.skipped))
        return None

    def __repr__(self) -> str:
        return f"ImageTextDataset(name={self.name!r}, samples={len(self)}, on_bad_sample={self.on_bad_sample!r})"


def collate(samples: Sequence[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """Stack tensors, list strings; drop ``None`` (skipped) samples and count them.

    Returns ``None`` when every sample of the batch was skipped; the runner
    must then skip the step (it still sees the count in its logs).
    """
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        logger.warning("a whole batch of %d samples was skipped as bad", skipped)
        return None
    if any("views" in s for s in kept):
        return _collate_studies(kept, skipped)
    batch: Dict[str, Any] = {}
    for key in kept[0]:
        values = [s[key] for s in kept]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["num_skipped"] = skipped
    return batch


def _collate_studies(kept: Sequence[Dict[str, Any]], skipped: int) -> Dict[str, Any]:
    """A batch holding studies: every sample's images one after the other (``image [N, 3, H, W]``),
    ``image_counts [B]`` and ``views`` per sample, which the model turns into per-image segments."""
    stacks = [s["image"] if "views" in s else s["image"].unsqueeze(0) for s in kept]
    batch: Dict[str, Any] = {"image": torch.cat(stacks), "image_counts": torch.tensor([len(x) for x in stacks])}
    batch["views"] = [s.get("views") for s in kept]
    for key in kept[0]:
        if key not in batch:
            values = [s.get(key) for s in kept]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["num_skipped"] = skipped
    return batch
