"""Reading and writing weight files safely.

Every ``.pth``/``.pt``/``.bin`` goes through ``torch.load(weights_only=True)``
(no pickled code runs); ``.safetensors`` through safetensors.  Writes go to a
temporary file that is renamed into place, so a crash never leaves half a
checkpoint behind.
"""
from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional

import torch
from torch import nn
from xraygpt.common.fileio import atomic_write_with
from xraygpt.common.errors import CheckpointLoadError

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]


class CheckpointError(CheckpointLoadError):
    """A weight file that is missing, unreadable, or does not fit the model."""


def read_state_dict(path: str | os.PathLike, what: str) -> StateDict:
    """Load a flat ``name -> tensor`` dict; unwraps ``{"model": ...}`` training checkpoints.

    ``what`` says in the error what belongs at ``path`` (e.g. "EVA ViT-g weights (eva_vit_g.pth)").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found at {path}: put the file there or fix the config key that points to it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {what} from {path}: the file is empty (0 bytes; an interrupted copy or "
                              "download?); replace it with the complete file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # Memory-mapped (private, copy-on-write) when the file is torch.save's zip format: nothing is read twice.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        reason = str(exc) or type(exc).__name__  # torch.load's EOFError on a cut-off file has no message
        raise CheckpointError(f"cannot read {what} from {path}: {reason} (a truncated or foreign file?)") from exc
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict ({what} expected)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; is this really {what}?")
    return dict(state)


def check_shapes(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one readable error listing every tensor whose shape differs from the module's."""
    own = module.state_dict()
    wrong = [
        f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(
            f"{source} does not fit the configured model ({len(wrong)} shape mismatches): "
            + "; ".join(wrong[:6])
            + (" ..." if len(wrong) > 6 else "")
            + " — check the architecture settings (sizes, num_query_token, LLM) against the checkpoint"
        )


@contextlib.contextmanager
def skipped_init(skip: bool = True) -> Iterator[None]:
    """Build modules without their random initialisation when a checkpoint will overwrite every weight.

    Why: initialising EVA ViT-g's 1B parameters on the CPU took longer than reading them from disk (~21 s on
    2 cores). Only for modules loaded with :func:`load_exact` (or an equally complete load) right after.
    """
    if not skip:
        yield
        return
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4 kept it in modeling_utils
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        yield


def load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``: every parameter must be present, nothing unknown may be left.

    Buffers the module computes itself (index tables, position ids) may be absent.
    """
    check_shapes(module, state, source)
    result = module.load_state_dict(dict(state), strict=False)
    params = {name for name, _ in module.named_parameters()}
    missing = [k for k in result.missing_keys if k in params]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: missing {len(missing)} weights {missing[:6]}, unexpected {len(result.unexpected_keys)} "
            f"{result.unexpected_keys[:6]}"
        )


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Optional[Dict[str, str]] = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {}))


def save_original_pth(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``{"model": state}``, the layout the original runner saves and loads."""
    tensors = {k: v.detach().to("cpu").clone() for k, v in state.items()}
    return atomic_write_with(path, lambda tmp: torch.save({"model": tensors}, tmp))
