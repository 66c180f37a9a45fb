"""Reading annotation files into records, with every problem reported, not guessed.

Two layouts are accepted (both called ``filter_cap.json`` by convention):

* merged list: ``[{"image": "img/1.png", "prompt": "...", "caption": "...", "split": "train"?}, ...]``;
  ``image`` is relative to the annotation file's folder, or absolute; a study of several views has a
  list, ``"image": ["f.png", "l.png"]``, with an optional parallel ``"views": ["Frontal", "Lateral"]``;
* the original XrayGPT/MiniGPT-4 schema: ``{"annotations": [{"image_id": "1", "caption": "..."}]}``
  with the image at ``<image_dir>/<image_id>.<ext>`` and the prompt taken from a prompt file.

:func:`parse_annotations` returns the good records and a list of
:class:`Issue` for the rest, so the builder (error or skip) and the
``validate`` command (report everything) share one set of rules.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from xraygpt.common.constants import IMAGE_SUFFIXES
from xraygpt.common.errors import DataError
from xraygpt.datasets.prompts import normalise_prompt, pick_prompt


class AnnotationError(DataError):
    """An annotation file that cannot be used, naming the file and where."""


@dataclass(frozen=True)
class Record:
    """One sample before its image is loaded."""

    image_path: Path
    prompt: str
    caption: str
    image_id: str
    split: Optional[str] = None
    source: str = ""
    """``file[entry]`` the record came from, for error messages."""
    task: Optional[str] = None
    """Optional ``task`` field of the entry (the phantoms write ``report`` or ``vqa``)."""
    study_images: Tuple[Path, ...] = ()
    """Every image of a study entry (``"image": [...]``), first = ``image_path``; empty for one-image entries."""
    views: Tuple[str, ...] = ()
    """View names of a study's images (``"views"``), parallel to ``study_images``; may be empty."""

    @property
    def images(self) -> Tuple[Path, ...]:
        """All images of the sample, one or several."""
        return self.study_images or (self.image_path,)


@dataclass(frozen=True)
class Issue:
    """A problem in an annotation file; ``where`` is ``file`` or ``file[entry]``."""

    severity: str  # "error" or "warning"
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def read_json(path: str | Path) -> Any:
    """``json.load`` with errors that name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lines = text.splitlines()
        context = lines[exc.lineno - 1].strip()[:80] if 0 < exc.lineno <= len(lines) else ""
        raise AnnotationError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg.removesuffix(' at')} (line reads: {context!r})"
        ) from None


def parse_annotations(
    ann_path: str | Path,
    *,
    image_dir: str | Path | None = None,
    image_ext: Optional[str] = None,
    prompts: Optional[Sequence[str]] = None,
    prompt_seed: int = 0,
    allow_outside_paths: bool = False,
) -> Tuple[List[Record], List[Issue]]:
    """Records of every valid entry, plus an :class:`Issue` for each invalid one.

    ``image_dir`` (default ``<ann folder>/image``) and ``image_ext`` (default:
    whatever file ``<image_id>.*`` exists) serve the ``image_id`` schema;
    ``prompts`` fills entries that have no prompt of their own.
    Every image path must resolve (symlinks followed) inside the annotation
    file's folder or ``image_dir``; an entry that escapes them (absolute path,
    ``../``, a symlink out) is an error unless ``allow_outside_paths``.
    Raises :class:`AnnotationError` when the file as a whole is unusable.
    """
    ann_path = Path(ann_path)
    data = read_json(ann_path)
    root = ann_path.parent
    if isinstance(data, dict) and "annotations" in data:
        entries = data["annotations"]
    elif isinstance(data, list):
        entries = data
    else:
        raise AnnotationError(
            f"{ann_path}: expected a JSON list of {{image, prompt, caption}} entries or "
            f'{{"annotations": [{{image_id, caption}}, ...]}}, got {type(data).__name__}'
            + (f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else "")
        )
    if not isinstance(entries, list):
        raise AnnotationError(f"{ann_path}: 'annotations' must be a list, got {type(entries).__name__}")

    resolver = _ImageResolver(Path(image_dir) if image_dir else root / "image", image_ext)
    allowed = None if allow_outside_paths else _Containment(root, resolver.image_dir)
    records: List[Record] = []
    issues: List[Issue] = []
    for index, entry in enumerate(entries):
        where = f"{ann_path}[{index}]"
        record, problems = _parse_entry(entry, where, root, resolver, prompts, prompt_seed)
        if record is not None and allowed is not None:
            escape = allowed.problem(record.image_path)
            if escape:
                record, problems = None, [*problems, Issue("error", where, escape)]
        issues.extend(problems)
        if record is not None:
            records.append(record)
    return records, issues


def _parse_entry(
    entry: Any,
    where: str,
    root: Path,
    resolver: "_ImageResolver",
    prompts: Optional[Sequence[str]],
    prompt_seed: int,
) -> Tuple[Optional[Record], List[Issue]]:
    if not isinstance(entry, dict):
        return None, [Issue("error", where, f"entry must be an object, got {type(entry).__name__}")]
    problems: List[Issue] = _study_problems(entry, where)
    for field in ("caption", "prompt", "image_id", "split", "task") + (() if isinstance(entry.get("image"), list) else ("image",)):
        if field in entry and not isinstance(entry[field], str):
            shown = "null" if entry[field] is None else f"{type(entry[field]).__name__} {json.dumps(entry[field])[:40]}"
            problems.append(Issue("error", where, f"field '{field}' must be a string, got {shown}"))
    if "caption" not in entry:
        problems.append(Issue("error", where, "missing field 'caption'"))
    elif isinstance(entry["caption"], str) and not entry["caption"].strip():
        problems.append(Issue("error", where, "empty caption"))
    if "image" not in entry and "image_id" not in entry:
        problems.append(Issue("error", where, "missing field 'image' (or 'image_id')"))
    if problems:
        return None, problems

    study: Tuple[Path, ...] = ()
    if "image" in entry:
        names = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        paths = tuple(Path(n) if Path(n).is_absolute() else root / n for n in names)
        image_path = paths[0]
        study = paths if isinstance(entry["image"], list) else ()
        image_id = entry.get("image_id") or Path(names[0]).stem
    else:
        image_id = entry["image_id"]
        image_path = resolver.find(image_id)
        if image_path is None:
            return None, [Issue("error", where, f"image for image_id '{image_id}' not found: {resolver.describe(image_id)}")]

    if "prompt" in entry:
        prompt = normalise_prompt(entry["prompt"])
    elif prompts:
        prompt = pick_prompt(prompts, image_id, prompt_seed)
    else:
        return None, [Issue("error", where, "missing field 'prompt' and no prompt file configured")]
    return Record(image_path, prompt, entry["caption"], str(image_id), entry.get("split"), where, entry.get("task"),
                  study, tuple(entry.get("views") or ())), []


def _study_problems(entry: Dict[str, Any], where: str) -> List[Issue]:
    """A list ``image`` must hold non-empty strings; ``views`` must be strings, one per image."""
    images, views = entry.get("image"), entry.get("views")
    problems = []
    if isinstance(images, list):
        if not images:
            problems.append(Issue("error", where, "field 'image' is an empty list (give at least one path)"))
        elif not all(isinstance(i, str) and i.strip() for i in images):
            problems.append(Issue("error", where, f"field 'image' must list non-empty path strings, got {json.dumps(images)[:60]}"))
    if views is not None:
        if not isinstance(views, list) or not all(isinstance(v, str) and v.strip() for v in views):
            problems.append(Issue("error", where, f"field 'views' must be a list of view names, got {json.dumps(views)[:60]}"))
        elif images != []:
            count = len(images) if isinstance(images, list) else 1
            if len(views) != count:
                problems.append(Issue("error", where, f"field 'views' names {len(views)} views for {count} images"))
    return problems


class _Containment:
    """The folders a dataset's images may live in, resolved once (symlinks followed)."""

    def __init__(self, *folders: Path):
        self.folders = list(dict.fromkeys(Path(f).resolve() for f in folders))

    def problem(self, image_path: Path) -> Optional[str]:
        """None when ``image_path`` (its final target) lies inside one of the folders, else why not."""
        target = Path(os.path.realpath(image_path))
        if any(target.is_relative_to(folder) for folder in self.folders):
            return None
        via = " through a symlink" if target != Path(os.path.abspath(image_path)) else ""
        return (
            f"image {image_path} resolves{via} to {target}, outside the dataset folder {self.folders[0]}: move or "
            "copy the image into the dataset, or set build_info.allow_outside_paths: true to allow such paths"
        )


class _ImageResolver:
    """Finds ``<image_dir>/<image_id>.<ext>`` with one directory listing instead of a stat per entry."""

    def __init__(self, image_dir: Path, image_ext: Optional[str]):
        self.image_dir = image_dir
        self.image_ext = image_ext
        self._names: Optional[set] = None
        self._by_stem: Dict[str, str] = {}

    def find(self, image_id: str) -> Optional[Path]:
        names = self._listing()
        if self.image_ext:
            name = f"{image_id}{self.image_ext}"
            return self.image_dir / name if name in names else None
        if image_id in names:  # the id already carries its extension
            return self.image_dir / image_id
        name = self._by_stem.get(image_id)
        return self.image_dir / name if name else None

    def describe(self, image_id: str) -> str:
        pattern = f"{image_id}{self.image_ext}" if self.image_ext else f"{image_id}.<png|jpg|dcm>"
        if not self.image_dir.is_dir():
            return f"image folder {self.image_dir} does not exist (expected {self.image_dir / pattern})"
        return f"no file {self.image_dir / pattern}"

    def _listing(self) -> set:
        if self._names is None:
            self._names = set(os.listdir(self.image_dir)) if self.image_dir.is_dir() else set()
            for name in sorted(self._names):
                stem, dot, suffix = name.rpartition(".")
                if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES:
                    self._by_stem.setdefault(stem, name)
        return self._names


def find_duplicates(records: Iterable[Record]) -> List[Tuple[int, int]]:
    """Index pairs (first, repeat) of records with the same image, prompt and caption."""
    seen: Dict[Tuple[str, str, str], int] = {}
    pairs = []
    for index, record in enumerate(records):
        key = ("|".join(map(str, record.images)), record.prompt.strip(), record.caption.strip())
        if key in seen:
            pairs.append((seen[key], index))
        else:
            seen[key] = index
    return pairs
