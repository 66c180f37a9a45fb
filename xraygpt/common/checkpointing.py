"""Training checkpoints that are either complete or absent.

A checkpoint is a folder::

    step_00000120/
      model.safetensors     trainable weights only
      training_state.pt     optimizer, scheduler, scaler, RNG states, epoch, step, sampler position
      config.yaml           the resolved job config
      meta.json             format tag, counters and a SHA-256 of every file above

It is written into a temporary sibling folder, every file and the folder are
fsync'ed, and the folder is renamed into place in one step, so a crash (even
SIGKILL) mid-save leaves the previous checkpoints untouched and no folder that
looks valid.  Loading checks the format tag and the hashes, so a truncated,
corrupted or foreign file gives a clear error instead of a half-restored run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from xraygpt.common.errors import CheckpointLoadError, XrayGPTError
from xraygpt.common.fileio import atomic_write_text, publish_folder  # noqa: F401  (atomic_write_text: old import path)

logger = logging.getLogger("xraygpt.train")

FORMAT = "xraygpt-training-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
_TMP_PREFIX = ".tmp-"


class CheckpointError(CheckpointLoadError):
    """A checkpoint that cannot be used, with the path and what to do about it."""


# ----------------------------------------------------------------------------- RNG
def capture_rng_state() -> Dict[str, Any]:
    """Every RNG stream a training step may draw from, in torch.load(weights_only)-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # a different GPU count: seed what exists from the saved first state
            for i in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(cuda_states[min(i, len(cuda_states) - 1)], i)


def _as_python_state(state: Any) -> tuple:
    """random.setstate wants tuples; a load may hand back lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


# ------------------------------------------------------------------- file helpers
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------- save/load
def save_checkpoint(
    folder: Path,
    *,
    weights: Dict[str, torch.Tensor],
    training_state: Dict[str, Any],
    config_yaml: str,
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint folder atomically; returns its final path. Refuses to overwrite."""
    folder = Path(folder)
    if folder.exists():
        raise CheckpointError(f"checkpoint {folder} already exists; refusing to overwrite it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{_TMP_PREFIX}{folder.name}.{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        torch.save(training_state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        files = {name: _sha256(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE, CONFIG_FILE)}
        meta_doc = {"format": FORMAT, "version": FORMAT_VERSION, **(meta or {}), "sha256": files}
        (tmp / META_FILE).write_text(json.dumps(meta_doc, indent=2), encoding="utf-8")
        publish_folder(tmp, folder, files=(*files, META_FILE))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: Path) -> Dict[str, Any]:
    """The checkpoint's meta.json after checking it is ours; raises CheckpointError otherwise."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"checkpoint not found: {folder} (run.resume_ckpt_path must name a checkpoint folder)")
    if folder.is_file():
        raise CheckpointError(
            f"{folder} is a file, not an xraygpt training checkpoint folder (holding {META_FILE}, {WEIGHTS_FILE}, "
            f"{STATE_FILE}). To start from model weights only (e.g. an original MiniGPT-4/XrayGPT .pth), "
            "set model.ckpt instead of run.resume_ckpt_path."
        )
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{folder} is not an xraygpt training checkpoint: {META_FILE} is missing "
            "(an interrupted save never leaves such a folder; pick another checkpoint)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {folder}: cannot parse {META_FILE} ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not an xraygpt training checkpoint ({META_FILE} has no '{FORMAT}' tag)")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {folder} has format version {meta.get('version')}, this code reads {FORMAT_VERSION}"
        )
    return meta


def verify_checkpoint(folder: Path, verify: bool = True) -> Dict[str, Any]:
    """The meta of a complete checkpoint whose files all match their SHA-256; raises CheckpointError otherwise."""
    folder = Path(folder)
    meta = read_meta(folder)
    for name, expected in meta.get("sha256", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"corrupt checkpoint {folder}: {name} is missing")
        if verify and _sha256(path) != expected:
            raise CheckpointError(
                f"corrupt checkpoint {folder}: {name} does not match its SHA-256 in {META_FILE} "
                "(the file was modified or truncated); resume from an earlier checkpoint"
            )
    return meta


def load_checkpoint(folder: Path, verify: bool = True) -> Dict[str, Any]:
    """Return ``{"weights", "training_state", "config_yaml", "meta"}`` of a verified checkpoint."""
    folder = Path(folder)
    meta = verify_checkpoint(folder, verify)
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors / unpickling errors
        raise CheckpointError(f"corrupt checkpoint {folder}: cannot read it ({exc or type(exc).__name__})") from exc
    return {
        "weights": weights,
        "training_state": state,
        "config_yaml": (folder / CONFIG_FILE).read_text(encoding="utf-8"),
        "meta": meta,
    }


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (by global step).

    Hidden folders (temporaries of a save, ``.corrupt-*`` set aside by :func:`latest_checkpoint`) are not listed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith(".") and (child / META_FILE).is_file():
            try:
                found.append((int(read_meta(child).get("global_step", -1)), child.name, child))
            except CheckpointError:
                continue
    return [path for _, _, path in sorted(found)]


def remove_stale_temporaries(root: Path) -> int:
    """Delete temp folders left by a killed save; returns how many were removed."""
    root = Path(root)
    if not root.is_dir():
        return 0
    stale = [child for child in root.iterdir() if child.name.startswith(_TMP_PREFIX)]
    for child in stale:
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    return len(stale)


CORRUPT_PREFIX = ".corrupt-"


def latest_checkpoint(root: Path, verify: Callable[[Path], Any] = verify_checkpoint) -> Optional[Path]:
    """The newest checkpoint folder under ``root`` that ``verify`` accepts (None when there is none).

    Newer folders that fail (a corrupt or half-copied checkpoint) are renamed to ``.corrupt-<name>``, with
    a warning, so the resumed run can save under their names again.  ``verify`` raises
    :class:`CheckpointLoadError` for a bad folder (the default checks the format tag and every SHA-256).
    """
    root = Path(root)
    if not root.is_dir():
        return None
    candidates = sorted((child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")),
                        key=lambda child: child.name, reverse=True)  # step_%08d: name order is step order
    for folder in candidates:
        try:
            verify(folder)
        except CheckpointLoadError as exc:
            aside, number = folder.with_name(f"{CORRUPT_PREFIX}{folder.name}"), 0
            while aside.exists():
                number += 1
                aside = folder.with_name(f"{CORRUPT_PREFIX}{folder.name}.{number}")
            os.rename(folder, aside)
            logger.warning("newest checkpoint %s is not usable (%s); set aside as %s, falling back to the previous "
                           "complete checkpoint", folder, XrayGPTError.one_line(exc), aside.name)
            continue
        return folder
    return None
