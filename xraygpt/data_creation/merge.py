"""Join finished datasets (e.g. OpenI + ROCO) into one folder the ``medvqa`` builder reads.

Images go to ``image/<dataset name>/`` (hard links when possible, copies otherwise), so
names from different sources cannot collide.  The inputs' manifests supply the split
groups: a group that is train in one input and val/test in another stops the merge,
because that would leak a patient or article across splits.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xraygpt.data_creation.output_folder import IDENTITY_FILE, claim_output_folder, stored_identity, write_identity
from xraygpt.data_creation.pipeline import MANIFEST, SPLIT_FILES
from xraygpt.data_creation.records import DataCreationError
from xraygpt.data_creation.splitting import SPLITS
from xraygpt.common.fileio import atomic_write_json, atomic_write_with

log = logging.getLogger(__name__)
FIELDS = ("image", "prompt", "caption")


def _load_entries(path: Path) -> List[Dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataCreationError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, list):
        raise DataCreationError(f"{path}: expected a JSON list of {{image, prompt, caption}} entries")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), str) or not entry.get(k) for k in FIELDS):
            raise DataCreationError(f"{path}: entry {index} needs non-empty string fields {list(FIELDS)}, got {entry!r:.200}")
    return data


def _place_image(source: Path, target: Path) -> None:
    """Hard link (instant, no extra space) or copy; an existing target is kept (resume)."""
    if target.exists():
        return
    if not source.is_file():
        raise DataCreationError(f"image missing: {source} (referenced by the input dataset)")
    atomic_write_with(target, lambda tmp: _link_or_copy(source, Path(tmp)))


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink()  # the empty temp file: a link needs a free name
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _dataset_names(inputs: Sequence[Path], names: Optional[Sequence[str]]) -> List[str]:
    if names and len(names) != len(inputs):
        raise DataCreationError(f"--names gives {len(names)} names for {len(inputs)} inputs")
    chosen = list(names) if names else [p.resolve().name for p in inputs]
    if len(set(chosen)) != len(chosen):
        raise DataCreationError(f"dataset names must differ, got {chosen}; pass --names")
    return chosen


def _merge_identity(manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if manifest.get("tool") != "xraygpt.data_creation.merge":
        return None
    return {"inputs": [{"name": i.get("name"), "path": i.get("path")} for i in manifest.get("inputs", [])]}


def merge_datasets(inputs: Sequence[Path], out: Path, names: Optional[Sequence[str]] = None,
                   overwrite: bool = False) -> Dict[str, Any]:
    """Write the merged dataset to ``out``; returns its manifest.

    ``out`` must be new, empty, or an earlier merge of the same inputs; anything else needs ``overwrite``.
    """
    if not inputs:
        raise DataCreationError("give at least one input dataset folder")
    dataset_names = _dataset_names(inputs, names)
    identity = {"inputs": [{"name": name, "path": str(folder.resolve())} for folder, name in zip(inputs, dataset_names)]}
    claim_output_folder(out, identity, [*SPLIT_FILES.values(), MANIFEST, "image", str(IDENTITY_FILE.parent)],
                        overwrite=overwrite, stored=stored_identity(out, _merge_identity))
    write_identity(out, identity)
    merged: Dict[str, List[Dict[str, str]]] = {split: [] for split in SPLITS}
    group_split: Dict[str, Tuple[str, str]] = {}
    seen_entries = set()
    duplicates = 0
    sources = []
    for folder, name in zip(inputs, dataset_names):
        if not (folder / SPLIT_FILES["train"]).is_file():
            raise DataCreationError(f"{folder} has no {SPLIT_FILES['train']}; is it a dataset folder made by create_*.py?")
        manifest: Dict[str, Any] = {}
        if (folder / MANIFEST).is_file():
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        else:
            log.warning("%s has no %s: cannot check it for split leakage", folder, MANIFEST)
        for split, info in manifest.get("splits", {}).items():
            for group in info.get("groups", []):
                previous = group_split.setdefault(group, (split, name))
                if previous[0] != split:
                    raise DataCreationError(
                        f"group {group} is in {previous[0]} of {previous[1]} but in {split} of {name}: "
                        "merging would leak it across splits; rebuild the inputs with the same --seed and --split or drop one"
                    )
        for split in SPLITS:
            path = folder / SPLIT_FILES[split]
            if not path.is_file():
                continue
            for entry in _load_entries(path):
                image_path = Path(entry["image"])
                source = image_path if image_path.is_absolute() else folder / image_path
                relative = Path(*image_path.parts[1:]) if image_path.parts[0] == "image" and not image_path.is_absolute() else Path(image_path.name)
                target = Path("image") / name / relative
                _place_image(source, out / target)
                merged_entry = {"image": target.as_posix(), "prompt": entry["prompt"], "caption": entry["caption"]}
                key = tuple(merged_entry[k] for k in FIELDS)
                if key in seen_entries:
                    duplicates += 1
                    continue
                seen_entries.add(key)
                merged[split].append(merged_entry)
        sources.append({
            "name": name, "path": str(folder.resolve()),
            **{k: manifest.get(k) for k in ("source", "generator", "prompt_versions", "counts") if k in manifest},
        })
    for split in SPLITS:
        atomic_write_json(out / SPLIT_FILES[split], merged[split])
    groups_by_split: Dict[str, List[str]] = {split: [] for split in SPLITS}
    for group, (split, _) in sorted(group_split.items()):
        groups_by_split[split].append(group)
    manifest = {
        "tool": "xraygpt.data_creation.merge",
        "inputs": sources,
        "counts": {"entries": {s: len(merged[s]) for s in SPLITS}, "duplicates_dropped": duplicates},
        "splits": {s: {"file": SPLIT_FILES[s], "entries": len(merged[s]), "groups": groups_by_split[s]} for s in SPLITS},
    }
    atomic_write_json(out / MANIFEST, manifest)
    log.info("merged %d datasets into %s: train/val/test = %s, %d duplicate entries dropped",
             len(inputs), out, [len(merged[s]) for s in SPLITS], duplicates)
    return manifest
