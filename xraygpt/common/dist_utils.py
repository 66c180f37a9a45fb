"""torch.distributed set-up for runs launched by ``torchrun`` (or not launched at all).

torchrun exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we
read them, pick NCCL on GPUs and gloo on CPU, and otherwise stay out of the
way: a plain ``python train.py`` is a world of one without a process group.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from xraygpt.common.device import pick_device
from xraygpt.common.schema import RunConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(run: RunConfig) -> DistInfo:
    """Join the process group when torchrun started us and ``run.distributed`` allows it."""
    if not (launched_by_torchrun() and run.distributed):
        return DistInfo(device=pick_device(run.device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(run.device, local_rank=local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = process_group_backend(device)
        dist.init_process_group(backend=backend, init_method=run.dist_url, rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
        logger.info("process group: backend %s, rank %d of %d, device %s", backend, rank, world_size, device)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def process_group_backend(device: torch.device) -> str:
    """NCCL for CUDA tensors plus gloo for the small CPU tensors the runner reduces (loss sums, counters)."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op on a world of one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s value on every rank (e.g. a job id made from a timestamp)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(value: Any) -> list:
    """``value`` of every rank, in rank order (``[value]`` on a world of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
