"""Claiming an ``--out`` folder: only an empty folder, or a dataset this tool made with the same inputs, is written.

A run records what it builds (source and options) in ``cache/identity.json`` before it writes
anything else, so an interrupted run is still recognised as ours when it is resumed.  A folder
that holds anything else (a user's files, a dataset from another source or other options) is
refused unless ``--overwrite`` is given, which deletes only the files this tool writes.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from xraygpt.common.fileio import atomic_write_json
from xraygpt.data_creation.records import DataCreationError

log = logging.getLogger(__name__)

IDENTITY_FILE = Path("cache") / "identity.json"


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with stored copies."""
    return json.loads(json.dumps(value, default=str))


def _differences(stored: Any, wanted: Any, prefix: str = "") -> List[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        found: List[str] = []
        for key in sorted(set(stored) | set(wanted)):
            found += _differences(stored.get(key), wanted.get(key), f"{prefix}{key}.")
        return found
    return [] if stored == wanted else [prefix.rstrip(".")]


def claim_output_folder(out: Path, identity: Dict[str, Any], outputs: Iterable[str], *, overwrite: bool,
                        stored: Optional[Dict[str, Any]]) -> None:
    """Refuse ``out`` unless it is empty or holds our dataset of the same ``identity``; then record the claim.

    ``stored`` is the identity found in the folder (None when there is none); ``outputs`` the names this
    tool writes there, which ``overwrite`` deletes first.
    """
    wanted = as_json(identity)
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise DataCreationError(f"--out {out} is a file; give a folder (new, empty, or a dataset made by this tool)")
    if present and stored != wanted and not overwrite:
        if stored is None:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise DataCreationError(
                f"--out {out} is not empty ({shown}) and holds no dataset made by this tool: choose a new or empty "
                "folder, or pass --overwrite to replace the dataset files in it"
            )
        changed = ", ".join(_differences(stored, wanted)[:6])
        raise DataCreationError(
            f"--out {out} holds a dataset built with other inputs or options (differs in: {changed}): rerun with the "
            "same options to resume it, choose another --out, or pass --overwrite to rebuild it"
        )
    if present and overwrite and stored != wanted:
        removed = [name for name in outputs if (out / name).exists()]
        for name in removed:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        log.warning("--overwrite: removed %s from %s", ", ".join(removed) or "nothing", out)


def stored_identity(out: Path, from_manifest) -> Optional[Dict[str, Any]]:
    """The identity recorded in ``out`` (the claim file, else derived from its manifest by ``from_manifest``)."""
    claim = out / IDENTITY_FILE
    for path, read in ((claim, lambda data: data), (out / "manifest.json", from_manifest)):
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return None
            return read(data) if isinstance(data, dict) else None
    return None


def write_identity(out: Path, identity: Dict[str, Any]) -> None:
    atomic_write_json(out / IDENTITY_FILE, as_json(identity))
