"""One generated text per dataset sample, as the records evaluation scores and writes.

A record is ``{"dataset", "split", "image_id", "prompt", "question", "prediction", "reference"}``;
``question`` is ``None`` for report samples and the question for VQA ones.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["generate_records"]


def _batches(dataset, batch_size: int, limit: Optional[int], num_workers: int) -> Iterator[Optional[Dict[str, Any]]]:
    from torch.utils.data import DataLoader, Subset

    from xraygpt.datasets.caption_dataset import collate

    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)


def generate_records(
    model,
    splits: Iterable[tuple],
    batch_size: int,
    generation_kwargs: Dict[str, Any],
    device: str = "cpu",
    limit: Optional[int] = None,
    num_workers: int = 0,
    vqa_datasets: Sequence[str] = (),
) -> Tuple[List[Dict[str, Any]], int]:
    """Generate one text per sample: ``(records, number of samples skipped as unreadable)``.

    Samples of datasets named in ``vqa_datasets`` (or carrying a ``question``) are VQA items whose
    prompt is the question and whose caption is the reference answer.
    """
    import torch
    from tqdm import tqdm

    records: List[Dict[str, Any]] = []
    skipped = 0
    for name, split, dataset in splits:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        produced = len(records)
        with tqdm(total=n, desc=f"{name}/{split}", unit="sample") as progress, torch.inference_mode():
            for batch in _batches(dataset, batch_size, limit, num_workers):
                if batch is None:  # every sample of the batch was unreadable (and the policy is skip)
                    continue
                prompts = list(batch["prompt"])
                studies = {k: batch[k] for k in ("image_counts", "views") if k in batch}  # several views per sample
                outputs = model.generate(batch["image"].to(device), prompts, **generation_kwargs, **studies)
                if len(outputs) != len(prompts):
                    raise RuntimeError(f"model.generate returned {len(outputs)} texts for a batch of {len(prompts)}")
                marked = batch.get("question") or [None] * len(prompts)
                questions = [q or (p if name in vqa_datasets else None) for q, p in zip(marked, prompts)]
                for i, text in enumerate(outputs):
                    records.append({
                        "dataset": name,
                        "split": split,
                        "image_id": str(batch["image_id"][i]),
                        "prompt": prompts[i],
                        "question": questions[i],
                        "prediction": text,
                        "reference": batch["caption"][i],
                    })
                progress.update(len(prompts))
        skipped += n - (len(records) - produced)
    return records, skipped
