"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP), for ``run.strategy: fsdp``.

A checkpoint folder keeps the layout of :mod:`xraygpt.common.checkpointing`
(same ``meta.json`` tag, ``training_state.pt``, ``config.yaml``), with the
trainable weights and the optimizer in ``dcp/`` instead of one safetensors
file: every process writes its own shards, nobody gathers the full model.

Atomic like the unsharded kind: all processes write into ``.tmp-<name>/``,
then, after a barrier, rank 0 writes the small files and renames the folder
into place, so a crash mid-save leaves the previous checkpoints loadable
(the temporary folder is removed at the next start).  DCP re-shards on load,
so a checkpoint written by N processes resumes on M; on the same N every
process also gets its own RNG state back, so the continuation is exact.

``python -m xraygpt.runners.distributed_checkpoint CKPT --out W.safetensors [--original-pth W.pth]``
gathers the full trainable weights of such a checkpoint into our safetensors
(usable as ``model.ckpt``) and, on request, the original ``{"model": ...}`` .pth.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from xraygpt.common import checkpointing as ckpt
from xraygpt.common.dist_utils import all_gather_objects, barrier
from xraygpt.common.fileio import publish_folder

logger = logging.getLogger(__name__)

LAYOUT = "dcp"
DCP_DIR = "dcp"
_SMALL_FILES = (ckpt.STATE_FILE, ckpt.CONFIG_FILE)


def _options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights come from the model's own files; the checkpoint holds what training changes.
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def is_sharded_checkpoint(folder: Path) -> bool:
    return ckpt.read_meta(folder).get("layout") == LAYOUT


def save_sharded_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                            training_state: Dict[str, Any], config_yaml: str, meta: Dict[str, Any],
                            is_main: bool) -> Path:
    """Collective: every process calls it. Writes ``folder`` atomically; refuses to overwrite."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    tmp = folder.with_name(f"{ckpt._TMP_PREFIX}{folder.name}")  # one name for every process
    if is_main:
        if folder.exists():
            raise ckpt.CheckpointError(f"checkpoint {folder} already exists; refusing to overwrite it")
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / DCP_DIR).mkdir(parents=True)
    barrier()
    rng_per_rank = all_gather_objects(ckpt.capture_rng_state())
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
    barrier()
    if is_main:
        try:
            torch.save({**training_state, "rng_per_rank": rng_per_rank}, tmp / ckpt.STATE_FILE)
            (tmp / ckpt.CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
            shards = {p.name: p.stat().st_size for p in sorted((tmp / DCP_DIR).iterdir())}
            meta_doc = {"format": ckpt.FORMAT, "version": ckpt.FORMAT_VERSION, "layout": LAYOUT, **meta,
                        "sha256": {name: ckpt._sha256(tmp / name) for name in _SMALL_FILES}, "dcp_files": shards,
                        "trainable_keys": sorted(model_state)}
            (tmp / ckpt.META_FILE).write_text(json.dumps(meta_doc, indent=2), encoding="utf-8")
            publish_folder(tmp, folder, files=(*_SMALL_FILES, ckpt.META_FILE), subfolders=(DCP_DIR,))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    barrier()
    return folder


def verify(folder: Path) -> Dict[str, Any]:
    """meta.json of a complete sharded checkpoint; a missing, truncated or edited file raises CheckpointError."""
    folder = Path(folder)
    meta = ckpt.read_meta(folder)
    if meta.get("layout") != LAYOUT:
        raise ckpt.CheckpointError(
            f"{folder} holds unsharded weights (written with run.strategy: ddp); resume it with run.strategy: ddp, "
            "or start from its weights with model.ckpt=<it>/model.safetensors"
        )
    for name, expected in meta.get("sha256", {}).items():
        path = folder / name
        if not path.is_file() or ckpt._sha256(path) != expected:
            raise ckpt.CheckpointError(f"corrupt checkpoint {folder}: {name} is missing or does not match its "
                                       f"SHA-256 in {ckpt.META_FILE}; resume from an earlier checkpoint")
    for name, size in meta.get("dcp_files", {}).items():
        path = folder / DCP_DIR / name
        if not path.is_file() or path.stat().st_size != size:
            raise ckpt.CheckpointError(f"corrupt checkpoint {folder}: {DCP_DIR}/{name} is missing or has another "
                                       f"size than {ckpt.META_FILE} records; resume from an earlier checkpoint")
    return meta


def load_sharded_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """Collective: restore trainable weights and optimizer in place (any process count); returns the training state.

    Its ``rng`` is this process's own RNG state when the process count is the one that saved it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(folder)
    meta = verify(folder)
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    saved_keys = set(meta.get("trainable_keys", []))
    if saved_keys != set(model_state):
        missing, unexpected = sorted(set(model_state) - saved_keys), sorted(saved_keys - set(model_state))
        raise ckpt.CheckpointError(
            f"checkpoint {folder} does not match this model's trainable weights: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (was it written with another model config, freeze flags or LoRA?)"
        )
    state = {"model": model_state, "optim": optim_state}
    try:
        dcp.load(state, checkpoint_id=str(folder / DCP_DIR))
    except Exception as exc:  # DCP reports shape or key mismatches as planner errors
        raise ckpt.CheckpointError(f"checkpoint {folder} does not fit this run's model/optimizer ({exc})") from exc
    # Not strict: the frozen weights are absent on purpose (the trainable key set was checked above).
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(strict=False))
    training = torch.load(folder / ckpt.STATE_FILE, map_location="cpu", weights_only=True)
    per_rank = training.pop("rng_per_rank", None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if per_rank and len(per_rank) == world:
        training["rng"] = per_rank[rank]
    return training


def read_full_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The full (unsharded) trainable weights of a sharded checkpoint, in one process, on CPU."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    verify(folder)
    reader = FileSystemReader(str(folder / DCP_DIR))
    weights: Dict[str, torch.Tensor] = {}
    for key, item in reader.read_metadata().state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, TensorStorageMetadata):
            weights[key[len("model."):]] = torch.empty(item.size, dtype=item.properties.dtype)
    with warnings.catch_warnings():  # no_dist=True is the point here; DCP warns about it anyway
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": weights}, storage_reader=reader, no_dist=True)
    return weights


def export_weights(folder: Path, out: Path, original_pth: Optional[Path] = None) -> Dict[str, torch.Tensor]:
    """Write the gathered trainable weights as our safetensors (and the original ``{"model": ...}`` .pth)."""
    from xraygpt.models.checkpoint_io import save_original_pth, save_safetensors

    weights = read_full_weights(folder)
    save_safetensors(weights, out, metadata={"format": "xraygpt", "arch": "mini_gpt4", "source": str(folder)})
    if original_pth is not None:
        save_original_pth(original_names(weights, folder), original_pth)
    return weights


def original_names(weights: Dict[str, torch.Tensor], source: Path) -> Dict[str, torch.Tensor]:
    """Our names -> the original checkpoint's, by the ``original_checkpoint_names`` of the model class that
    ``source``'s config.yaml names (``model.arch``)."""
    from omegaconf import OmegaConf

    from xraygpt.common.registry import registry

    config = Path(source) / ckpt.CONFIG_FILE
    arch = OmegaConf.select(OmegaConf.create(config.read_text(encoding="utf-8") or "{}"), "model.arch")
    if not arch:
        raise ckpt.CheckpointError(f"{config} names no model.arch, so the original names are unknown; "
                                   "export without --original-pth")
    model_cls = registry.get_model_class(arch)
    rename = getattr(model_cls, "original_checkpoint_names", None)
    if rename is None:
        raise ckpt.CheckpointError(f"{model_cls.__name__} ({arch}) has no original checkpoint format "
                                   "(original_checkpoint_names); export without --original-pth")
    return rename(weights, source=str(source))


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Gather the trainable weights of a sharded (FSDP) checkpoint.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder, e.g. output/job/checkpoints/step_00000120")
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write (use it as model.ckpt)")
    parser.add_argument("--original-pth", type=Path, default=None, help="also write the original {'model': ...} .pth")
    args = parser.parse_args(argv)
    weights = export_weights(args.checkpoint, args.out, args.original_pth)
    total = sum(w.numel() for w in weights.values())
    print(f"wrote {args.out}: {len(weights)} tensors, {total:,} values"
          + (f"; and {args.original_pth}" if args.original_pth else ""))
    return 0


if __name__ == "__main__":
    from xraygpt.common.cli import run_cli

    run_cli(main)
