"""``image_text_pretrain``: what to build and what one step computes, for image -> text training.

The runner owns the loop; the task owns the job's pieces: the model from
``model:``, the datasets from ``datasets:``, the loss of a batch and the
optional generation metrics at validation time.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import ConcatDataset, Dataset

from xraygpt.common.registry import registry


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask:
    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def setup_task(cls, cfg: Any) -> "ImageTextPretrainTask":
        return cls(cfg)

    # ----------------------------------------------------------------- building
    def build_model(self) -> torch.nn.Module:
        section = self.cfg.model  # checked at load (MiniGPT4Config)
        if section is None:
            raise ValueError("the config has no model.arch (e.g. mini_gpt4)")
        return registry.get_model_class(section.arch).from_config(section)

    def build_datasets(self) -> Dict[str, Dataset]:
        """Every dataset's builder; splits of several datasets mixed by ``sample_ratio`` or concatenated."""
        from xraygpt.datasets import build_datasets

        if not self.cfg.datasets_cfg:
            raise ValueError("the config has no datasets: section")
        run = self.cfg.run
        return build_datasets(self.cfg.datasets_cfg, on_bad_sample=run.on_bad_sample, seed=run.seed)

    # -------------------------------------------------------------------- steps
    def train_step(self, model: torch.nn.Module, samples: Dict[str, Any]) -> Dict[str, Any]:
        return model(samples)

    def valid_step(self, model: torch.nn.Module, samples: Dict[str, Any]) -> Dict[str, Any]:
        return model(samples)

    # -------------------------------------------------------------------- hooks
    def sample_lengths(self, dataset: Dataset) -> List[int]:
        """Caption lengths (characters) for ``run.group_by_length``."""
        lengths = _lengths_of(dataset)
        if lengths is None:
            raise ValueError(
                f"run.group_by_length needs caption lengths, but {type(dataset).__name__} exposes no "
                "`caption_lengths()`, `records` or `annotation` list; set run.group_by_length: false"
            )
        return lengths

    def generation_metrics(self, runner: Any, dataset: Dataset) -> Dict[str, float]:
        """Scores of text generated for the first ``run.valid_generate`` samples (rank 0; {} when off).

        ``dataset`` must yield images (the runner passes the uncached split).
        """
        run = runner.run_config
        count = run.valid_generate
        if count == 0 or not runner.dist.is_main:
            return {}
        from xraygpt.inference.records import generate_records
        from xraygpt.evaluation import score_reports
        from xraygpt.runners.runner_base import unwrap

        records, _ = generate_records(
            unwrap(runner.model), [("valid", "val", dataset)], run.batch_size_eval,
            {"max_new_tokens": run.valid_max_new_tokens}, device=str(runner.device),
            limit=None if count < 0 else count,
        )
        if not records:
            return {}
        result = score_reports([r["prediction"] for r in records], [r["reference"] for r in records],
                               [r["question"] for r in records], meteor=False)
        return {key: float(value) for key, value in result["summary"].items() if isinstance(value, (int, float))}

    def after_training(self, runner: Any) -> None:
        """Hook for the end of training (nothing by default)."""


def _lengths_of(dataset: Dataset) -> Optional[List[int]]:
    if isinstance(dataset, ConcatDataset):
        parts = [_lengths_of(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else [n for p in parts for n in p]  # type: ignore[union-attr]
    if hasattr(dataset, "caption_lengths"):
        return list(dataset.caption_lengths())
    records = getattr(dataset, "records", None)
    if isinstance(records, list) and records and hasattr(records[0], "caption"):
        return [len(str(record.caption)) for record in records]
    annotation = getattr(dataset, "annotation", None)
    if isinstance(annotation, list) and annotation and isinstance(annotation[0], dict) and "caption" in annotation[0]:
        return [len(str(item["caption"])) for item in annotation]
    inner = getattr(dataset, "dataset", None)
    return _lengths_of(inner) if isinstance(inner, Dataset) else None
