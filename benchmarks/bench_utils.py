"""Timing, memory and FLOP helpers shared by the GPU benchmark scripts."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

GIB = 1024**3


@dataclass
class Timing:
    """Per-repetition wall times (ms) of one measured callable; the median is what tables report."""

    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repetitions were."""
        return (max(self.times_ms) - min(self.times_ms)) / self.median_ms if self.times_ms else float("nan")


def time_fn(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> Timing:
    """Median-able times of ``fn``: CUDA events around each call on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    timing = Timing()
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            timing.times_ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            timing.times_ms.append((time.perf_counter() - t0) * 1e3)
    return timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def param_count(module: torch.nn.Module | None, exclude: tuple[torch.nn.Module, ...] = ()) -> int:
    if module is None:
        return 0
    skip = {id(p) for m in exclude for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


class PeakMemory:
    """Peak CUDA memory attributable to one model while other models stay resident.

    peak = max_allocated during the block - (allocated before the block - bytes of the model's own weights),
    i.e. what the process would need if only this model lived on the card.
    """

    def __init__(self, device: torch.device, own_weight_bytes: int):
        self.device, self.own = device, own_weight_bytes
        self.gib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.others = torch.cuda.memory_allocated(self.device) - self.own
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.gib = (torch.cuda.max_memory_allocated(self.device) - self.others) / GIB


def matmul_ceiling(device: torch.device, n: int, reps: int) -> float:
    """bf16 (fp32 on CPU) n^3 matrix product rate in TFLOP/s, on random data."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: torch.mm(a, b, out=out), device, reps=reps, warmup=3)
    return 2 * n**3 / (t.median_ms * 1e-3) / 1e12


def copy_ceiling(device: torch.device, nbytes: int, reps: int) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, reps=reps, warmup=3)
    return 2 * src.numel() * 4 / (t.median_ms * 1e-3) / 1e9
