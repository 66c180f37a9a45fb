"""Dataset builders: a config section -> ``{"train": ds, "val": ds, "test": ds}``.

Every builder reads the same folder layout (see annotations.py) and differs
only in its defaults YAML (``xraygpt/configs/datasets/<name>/defaults.yaml``:
where the data lives, the image extension, the prompt file), so adding a
dataset is a YAML file plus a three-line subclass.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from xraygpt.common.registry import registry
from xraygpt.common.schema import Source, reject_unknown_keys
from xraygpt.datasets.annotations import AnnotationError, Issue, Record, parse_annotations
from xraygpt.datasets.caption_dataset import ImageTextDataset, check_policy
from xraygpt.datasets.prompts import load_prompts
from xraygpt.processors.base import build_processor

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "eval": "val", "testing": "test", "training": "train"}


@dataclass
class BuildInfo:
    storage: str = ""
    """Dataset folder (relative paths are taken from the working directory)."""
    ann_files: Dict[str, Optional[str]] = field(
        default_factory=lambda: {"train": "filter_cap.json", "val": "filter_cap_val.json", "test": "filter_cap_test.json"}
    )
    """Annotation file per split, relative to ``storage``; missing val/test files are simply absent splits.
    ``train: null`` declares an evaluation-only dataset (otherwise a missing train file is an error)."""
    image_dir: str = "image"
    """Folder of ``<image_id>.<ext>`` images for the ``image_id`` schema, relative to ``storage``."""
    image_ext: Optional[str] = None
    """Fixed image extension for ``image_id`` entries (``.jpg`` for MIMIC); ``null`` finds any image file."""
    prompt_path: Optional[str] = "configs/prompts/report.txt"
    """Prompts for entries without one; relative paths are tried in the working directory, then the package."""
    prompt_seed: int = 0
    """Seed of the per-sample prompt choice."""
    tasks: Optional[List[str]] = None
    """Keep only entries whose ``task`` field is listed (e.g. ``[report]``); ``null`` keeps everything."""
    allow_outside_paths: bool = False
    """Accept image paths that resolve (symlinks followed) outside ``storage`` and ``image_dir``."""


@dataclass
class DatasetSection:
    data_type: str = "images"
    build_info: BuildInfo = field(default_factory=BuildInfo)
    vis_processor: Dict[str, Any] = field(default_factory=dict)
    text_processor: Dict[str, Any] = field(default_factory=dict)
    sample_ratio: Optional[float] = None
    """Relative weight of this dataset when several are mixed for training."""
    on_bad_sample: Optional[str] = None
    """Per-dataset override of ``run.on_bad_sample``."""


class ImageTextBuilder:
    """Builds train/val/test :class:`ImageTextDataset` objects from one dataset config section."""

    NAME = "medvqa"
    DATASET_CONFIG_DICT: Dict[str, str] = {}
    """Optional ``{"default": path}``; the convention configs/datasets/<NAME>/defaults.yaml applies otherwise."""

    def __init__(self, cfg: Optional[Mapping[str, Any]] = None, on_bad_sample: Optional[str] = None):
        self.config = _checked_section(self.default_config(), cfg, self.NAME)
        # The dataset's own setting beats the run-wide one passed by the runner.
        policy = self.config.on_bad_sample or on_bad_sample or "error"
        self.on_bad_sample = check_policy(policy)

    @classmethod
    def check_config(cls, cfg: Optional[Mapping[str, Any]], source: Source = None) -> DatasetSection:
        """The checked section (defaults under ``cfg``), for :class:`~xraygpt.common.config.Config` at load time."""
        return _checked_section(cls.default_config(), cfg, cls.NAME, source)

    @classmethod
    def default_config(cls) -> DictConfig:
        path = PACKAGE_ROOT / cls.DATASET_CONFIG_DICT.get("default", f"configs/datasets/{cls.NAME}/defaults.yaml")
        section = OmegaConf.load(path).get("datasets", {}).get(cls.NAME)
        if section is None:
            raise AnnotationError(f"{path} must define datasets.{cls.NAME}")
        return section

    # --------------------------------------------------------------- build
    def build_datasets(self, eval_processors: bool = False) -> Dict[str, ImageTextDataset]:
        """``eval_processors``: every split (train too) gets the eval image/text processors, as evaluation needs."""
        info = self.config.build_info
        storage = Path(info.storage)
        if not storage.is_dir():
            raise FileNotFoundError(
                f"dataset '{self.NAME}': storage folder {storage.resolve()} not found. Put filter_cap.json and the "
                f"images there, or set datasets.{self.NAME}.build_info.storage in your config"
            )
        records_by_split = self._records_by_split(storage, info)
        datasets = {}
        for split in SPLITS:
            records = records_by_split.get(split)
            if not records:
                continue
            stage = "train" if split == "train" and not eval_processors else "eval"
            datasets[split] = ImageTextDataset(
                records,
                vis_processor=build_processor(self.config.vis_processor.get(stage)),
                text_processor=build_processor(self.config.text_processor.get(stage)),
                on_bad_sample=self.on_bad_sample,
                name=f"{self.NAME}/{split}",
            )
        if not datasets:
            raise AnnotationError(f"dataset '{self.NAME}' in {storage}: no usable samples in any split")
        logger.info("dataset %s: %s", self.NAME, {split: len(ds) for split, ds in datasets.items()})
        return datasets

    def _records_by_split(self, storage: Path, info: BuildInfo) -> Dict[str, List[Record]]:
        prompts = load_prompts(info.prompt_path) if info.prompt_path else None
        out: Dict[str, List[Record]] = {}
        unknown = [key for key in info.ann_files if _SPLIT_ALIASES.get(key, key) not in SPLITS]
        if unknown:
            raise AnnotationError(f"datasets.{self.NAME}.build_info.ann_files: unknown split '{unknown[0]}' (use train, val, test)")
        for split, ann_name in info.ann_files.items():
            split = _SPLIT_ALIASES.get(split, split)
            if ann_name is None:
                continue
            ann_path = storage / ann_name
            if not ann_path.is_file():
                if split == "train":
                    raise FileNotFoundError(
                        f"dataset '{self.NAME}': training annotations {ann_path.resolve()} not found "
                        f"(a JSON list of {{image, prompt, caption}} or {{\"annotations\": [...]}})"
                    )
                continue
            records, issues = parse_annotations(
                ann_path,
                image_dir=storage / info.image_dir,
                image_ext=info.image_ext,
                prompts=prompts,
                prompt_seed=info.prompt_seed,
                allow_outside_paths=info.allow_outside_paths,
            )
            if split == "train" and not records and not issues:
                raise AnnotationError(
                    f"dataset '{self.NAME}': training annotations {ann_path} hold no entries (an empty list); "
                    f"regenerate them or check the file (`python -m xraygpt.datasets.validate {storage}`)"
                )
            self._handle_issues(ann_path, issues)
            if info.tasks is not None:
                records = [record for record in records if record.task in info.tasks]
            for record in records:
                # A `split` field inside the file wins over the file's own split.
                target = _SPLIT_ALIASES.get(record.split, record.split) if record.split else split
                if target not in SPLITS:
                    raise AnnotationError(f"{ann_path}: unknown split '{record.split}' (use train, val or test)")
                out.setdefault(target, []).append(record)
        return out

    def _handle_issues(self, ann_path: Path, issues: List[Issue]) -> None:
        errors = [issue for issue in issues if issue.severity == "error"]
        if not errors:
            return
        if self.on_bad_sample == "error":
            shown = "\n  ".join(str(issue) for issue in errors[:10])
            more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
            raise AnnotationError(
                f"{len(errors)} bad entr{'y' if len(errors) == 1 else 'ies'} in {ann_path}:\n  {shown}{more}\n"
                f"Fix them (`python -m xraygpt.datasets.validate {ann_path.parent}` lists all), "
                f"or set run.on_bad_sample=skip to drop them"
            )
        for issue in errors:
            logger.warning("skipping bad annotation %s", issue)
        logger.warning("skipped %d bad annotation entries of %s", len(errors), ann_path)


def _checked_section(defaults: DictConfig, cfg: Optional[Mapping[str, Any]], name: str,
                     source: Source = None) -> DatasetSection:
    """Merge the user's section over the defaults and check every key against the schema."""
    merged = OmegaConf.merge(defaults, cfg or {})
    reject_unknown_keys(merged, DatasetSection, f"datasets.{name}", source=source, error=AnnotationError)
    reject_unknown_keys(merged.get("build_info", {}), BuildInfo, f"datasets.{name}.build_info",
                        source=source and (lambda key: source(f"build_info.{key}")), error=AnnotationError)
    schema = OmegaConf.structured(DatasetSection)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, merged))
    except Exception as exc:  # omegaconf validation errors carry the key
        raise AnnotationError(f"bad config for datasets.{name}: {exc}") from None


@registry.register_builder("medvqa")
class MedVQABuilder(ImageTextBuilder):
    """Generic merged format (filter_cap.json of {image, prompt, caption}); also reads the image_id schema."""


@registry.register_builder("openi")
class OpenIBuilder(ImageTextBuilder):
    NAME = "openi"


@registry.register_builder("roco")
class ROCOBuilder(ImageTextBuilder):
    NAME = "roco"


@registry.register_builder("mimic")
class MIMICBuilder(ImageTextBuilder):
    """MIMIC-CXR layout of the original: image/<image_id>.jpg, prompts from the prompt file."""

    NAME = "mimic"


@registry.register_builder("phantoms")
class PhantomBuilder(ImageTextBuilder):
    """The synthetic phantom set written by ``python -m xraygpt.datasets.phantoms`` (medvqa format)."""

    NAME = "phantoms"
