"""Check a dataset before training: ``python -m xraygpt.datasets.validate <folder | file.json | config.yaml>``.

Reports JSON syntax errors (line and column), schema problems (missing or
non-string fields, empty captions), empty annotation files, image paths that
escape the dataset folder, images that are missing or cannot be decoded, and
duplicate entries; prints a summary and exits 1 when there are
errors (or warnings with ``--strict``), 0 when the data is clean.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from xraygpt.common.cli import add_debug_argument, run_cli
from xraygpt.datasets.annotations import AnnotationError, Issue, find_duplicates, parse_annotations
from xraygpt.datasets.image_io import ImageLoadError, load_medical_image
from xraygpt.datasets.prompts import load_prompts

ANN_NAMES = ("filter_cap.json", "filter_cap_val.json", "filter_cap_test.json")


@dataclass
class Target:
    """One annotation file and where its ``image_id`` images live."""

    ann_path: Path
    image_dir: Path
    image_ext: Optional[str] = None
    prompt_path: Optional[str] = None
    allow_outside_paths: bool = False
    required: bool = True
    """A file that must hold entries (the training annotations); an empty val/test file is only a warning."""


@dataclass
class Report:
    files: int = 0
    entries: int = 0
    usable: int = 0
    images_checked: int = 0
    issues: List[Issue] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(issue.severity == "error" for issue in self.issues)

    @property
    def warnings(self) -> int:
        return sum(issue.severity == "warning" for issue in self.issues)

    def summary(self) -> str:
        return (
            f"checked {self.files} annotation file(s), {self.entries} entries, {self.images_checked} images: "
            f"{self.errors} error(s), {self.warnings} warning(s); {self.usable} entries usable"
        )


def validate_targets(targets: Sequence[Target], decode_images: bool = True) -> Report:
    report = Report()
    for target in targets:
        report.files += 1
        prompts = load_prompts(target.prompt_path)
        try:
            records, issues = parse_annotations(
                target.ann_path, image_dir=target.image_dir, image_ext=target.image_ext, prompts=prompts,
                allow_outside_paths=target.allow_outside_paths,
            )
        except AnnotationError as exc:
            report.issues.append(Issue("error", str(target.ann_path), str(exc).removeprefix(f"{target.ann_path}: ")))
            continue
        report.entries += len(records) + len({i.where for i in issues})
        if not records and not issues:
            severity = "error" if target.required else "warning"
            report.issues.append(Issue(severity, str(target.ann_path), "holds no entries (an empty list): nothing to "
                                       "train or evaluate on; regenerate it or point the config at the right file"))
        report.issues.extend(issues)
        bad_images = _check_images(records, decode_images, report)
        report.usable += sum(1 for r in records if not any(str(p) in bad_images for p in r.images))
        for first, repeat in find_duplicates(records):
            report.issues.append(
                Issue("warning", f"{target.ann_path}[{repeat}]", f"duplicate of entry {first} (same image, prompt and caption)")
            )
    return report


def _check_images(records, decode_images: bool, report: Report) -> Dict[str, str]:
    """Each distinct image once; returns {path: reason} of the bad ones (every entry using them is reported)."""
    bad: Dict[str, str] = {}
    checked = set()
    for record in records:
        for image in record.images:  # every view of a study
            path = str(image)
            if path not in checked:
                checked.add(path)
                report.images_checked += 1
                if not decode_images:
                    if not Path(path).is_file():
                        bad[path] = "file not found"
                else:
                    try:
                        load_medical_image(path)
                    except ImageLoadError as exc:
                        bad[path] = exc.reason
            if path in bad:
                report.issues.append(Issue("error", record.source, f"image {path}: {bad[path]}"))
    return bad


def targets_for(path: Path, image_dir: Optional[Path] = None) -> List[Target]:
    """What to check for a folder, a single annotation file or a training config."""
    if path.is_dir():
        found = [path / name for name in ANN_NAMES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no annotation file ({', '.join(ANN_NAMES)}) in {path}")
        return [Target(ann, image_dir or path / "image", required=ann.name == ANN_NAMES[0]) for ann in found]
    if path.suffix.lower() in (".yaml", ".yml"):
        return _targets_from_config(path)
    if path.is_file():
        return [Target(path, image_dir or path.parent / "image")]
    raise FileNotFoundError(f"{path} does not exist")


def _targets_from_config(path: Path) -> List[Target]:
    from omegaconf import OmegaConf

    from xraygpt.common.config import _register_cfg_dir_resolver
    from xraygpt.common.registry import registry

    _register_cfg_dir_resolver(path.resolve().parent)  # configs may write storage: ${cfg_dir:}/data
    datasets = OmegaConf.load(path).get("datasets") or {}
    if not datasets:
        raise ValueError(f"{path} has no datasets section")
    targets = []
    for name, section in datasets.items():
        builder = registry.get_builder_class(name)(section)
        info = builder.config.build_info
        storage = Path(info.storage)
        for ann_name in info.ann_files.values():
            if ann_name and ((storage / ann_name).is_file() or ann_name == info.ann_files.get("train")):
                targets.append(Target(storage / ann_name, storage / info.image_dir, info.image_ext, info.prompt_path,
                                      info.allow_outside_paths, required=ann_name == info.ann_files.get("train")))
    return targets


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xraygpt.datasets.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="dataset folder, annotation JSON file, or training config YAML")
    parser.add_argument("--image-dir", type=Path, help="folder of <image_id>.<ext> images (default: <folder>/image)")
    parser.add_argument("--quick", action="store_true", help="only check that images exist, do not decode them")
    parser.add_argument("--strict", action="store_true", help="treat warnings (duplicates) as errors")
    parser.add_argument("--max-show", type=int, default=50, help="print at most this many issues")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="accept image paths outside the dataset folder (build_info.allow_outside_paths)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    try:
        targets = targets_for(args.path, args.image_dir)
        for target in targets:
            target.allow_outside_paths = target.allow_outside_paths or args.allow_outside_paths
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = validate_targets(targets, decode_images=not args.quick)
    for issue in report.issues[: args.max_show]:
        print(issue)
    if len(report.issues) > args.max_show:
        print(f"... {len(report.issues) - args.max_show} more issue(s) not shown (--max-show)")
    print(report.summary())
    failed = report.errors > 0 or (args.strict and report.warnings > 0)
    if failed:
        print("FAILED: fix the entries above, or train with run.on_bad_sample=skip to drop them (each skip is logged)")
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
