"""The one device picker: every entry point turns its ``--device`` / ``run.device`` into a torch device here."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from xraygpt.common.errors import DeviceError

logger = logging.getLogger(__name__)


def pick_device(requested: Optional[str] = None, gpu_id: Optional[int] = None, *, local_rank: int = 0) -> torch.device:
    """``requested`` (``cpu``, ``cuda``, ``cuda:N``, ...) as a device; CUDA falls back to the CPU with a warning.

    Nothing requested means this rank's GPU (``gpu_id`` or ``local_rank``) when CUDA exists, else the CPU.
    A bare ``cuda`` is this rank's GPU.  A string torch does not know, a GPU index past the
    last GPU, or ``gpu_id`` on a machine without CUDA raise :class:`DeviceError`.
    """
    if not requested:
        if gpu_id and not torch.cuda.is_available():
            raise DeviceError(f"--gpu-id {gpu_id} given but CUDA is not available", fix="use --device cpu")
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(str(requested))
    except RuntimeError:
        raise DeviceError(f"device {requested!r} is not a torch device", fix="use cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        logger.warning("device %s requested but no CUDA GPU is available: running on CPU", requested)
        return torch.device("cpu")
    index = device.index if device.index is not None else (gpu_id if gpu_id is not None else local_rank)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device cuda:{index} requested but this machine has {torch.cuda.device_count()} GPU(s)",
                          fix="pick an index below that, or use --device cpu")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
