"""Generate texts for dataset samples in batches and score them (validation and the quick start)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from xraygpt.runners.data import collate_fn_of, to_device

VQA_KEYS = ("question", "is_vqa", "task")
"""Sample fields that mark a VQA item (prompt = question, caption = answer)."""


def _is_vqa(batch: Dict[str, Any], row: int) -> bool:
    task = batch.get("task")
    if isinstance(task, list):
        return str(task[row]).lower() == "vqa"
    flag = batch.get("is_vqa")
    if isinstance(flag, (list, torch.Tensor)):
        return bool(flag[row])
    return False


@torch.no_grad()
def generate_for_samples(
    model: torch.nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]] = None,
    batch_size: int = 8,
    max_new_tokens: int = 160,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> List[Dict[str, Any]]:
    """One record per sample: image_id, prompt, reference (the caption), prediction, is_vqa."""
    subset = Subset(dataset, list(indices)) if indices is not None else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    records: List[Dict[str, Any]] = []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast():
            predictions = model.generate(
                batch.get("image"), list(batch["prompt"]), image_features=batch.get("image_features"),
                max_new_tokens=max_new_tokens,
            )
        for row, prediction in enumerate(predictions):
            records.append({
                "image_id": batch["image_id"][row] if "image_id" in batch else None,
                "prompt": batch["prompt"][row],
                "reference": batch["caption"][row],
                "prediction": prediction,
                "is_vqa": _is_vqa(batch, row),
            })
    model.train(was_training)
    return records


def score_records(records: List[Dict[str, Any]], meteor: bool = False) -> Dict[str, Any]:
    """``xraygpt.evaluation.score_reports`` over the records (VQA items scored as answers)."""
    from xraygpt.evaluation import score_reports

    questions = [r["prompt"] if r["is_vqa"] else None for r in records]
    return score_reports([r["prediction"] for r in records], [r["reference"] for r in records], questions,
                         meteor=meteor)
