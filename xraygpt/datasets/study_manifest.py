"""``studies.jsonl`` for the batch CLI: one study (several views of one patient visit) per line.

    {"id": "s1", "image": ["s1/frontal.png", "s1/lateral.png"], "views": ["Frontal", "Lateral"]}

Paths are relative to the manifest's folder (or absolute); ``views`` is optional.  Every problem is
reported with its line number before any model is loaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from xraygpt.common.errors import DataError


@dataclass(frozen=True)
class Study:
    id: str
    images: Tuple[Path, ...]
    views: Optional[Tuple[str, ...]] = None


def read_study_manifest(path: Path) -> List[Study]:
    """The manifest's studies in order; raises DataError naming the line of the first problem."""
    if not path.is_file():
        raise DataError(f"--study-manifest {path} not found")
    studies: List[Study] = []
    seen = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not JSON ({exc.msg})") from None
        images, views, study_id = entry.get("image"), entry.get("views"), entry.get("id")
        if not isinstance(study_id, str) or not study_id:
            raise DataError(f'{where}: each study needs an "id" string')
        if study_id in seen:
            raise DataError(f"{where}: study id {study_id!r} appears twice")
        if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
            raise DataError(f'{where}: "image" must be a non-empty list of paths')
        if views is not None and (not isinstance(views, list) or len(views) != len(images)
                                  or not all(isinstance(v, str) and v for v in views)):
            raise DataError(f'{where}: "views" must name one view per image ({len(images)})')
        paths = tuple(Path(i) if Path(i).is_absolute() else path.parent / i for i in images)
        seen.add(study_id)
        studies.append(Study(study_id, paths, tuple(views) if views else None))
    if not studies:
        raise DataError(f"--study-manifest {path} holds no study")
    return studies
