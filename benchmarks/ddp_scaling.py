"""DDP scaling of projection-only training: run once per GPU count, e.g.

    torchrun --nproc_per_node=1 benchmarks/ddp_scaling.py --out DIR
    torchrun --nproc_per_node=2 benchmarks/ddp_scaling.py --out DIR

Each process trains the full-size model (through the product's model code) on its own GPU with the same
per-GPU batch, wrapped in torch DDP as the runner does. Rank 0 adds ``ddp.samples_per_s_<N>gpu`` (and, once both
exist, ``ddp.scaling`` = 2-GPU / 1-GPU samples/s) to ``DIR/ddp.json``, which gpu_benchmark.py folds into RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_utils import time_fn  # noqa: E402
from gpu_benchmark import FULL, TINY, amp_dtype, build_ours, make_inputs, train_step_fn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--batch", type=int, default=16, help="per-GPU batch size")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    sizes = TINY if args.tiny else FULL
    model = build_ours(sizes, device, "bf16" if cuda else "fp32")
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    inputs = make_inputs(model, sizes, args.batch, device, seed=rank)
    samples = {"image": inputs.images, "prompt": inputs.prompts, "caption": inputs.captions}
    params = [p for p in model.parameters() if p.requires_grad]
    step = train_step_fn(lambda: ddp(samples)["loss"], params, device, amp_dtype(device))
    timing = time_fn(step, device, reps=sizes.reps, warmup=sizes.warmup)
    # The slowest rank sets the pace of a synchronous step.
    median = torch.tensor([timing.median_ms], device=device)
    dist.all_reduce(median, op=dist.ReduceOp.MAX)
    samples_per_s = world * args.batch / (median.item() / 1e3)
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "ddp.json"
        values = json.loads(path.read_text()) if path.is_file() else {}
        values[f"ddp.samples_per_s_{world}gpu"] = samples_per_s
        values["ddp.per_gpu_batch"] = args.batch
        if "ddp.samples_per_s_1gpu" in values and "ddp.samples_per_s_2gpu" in values:
            values["ddp.scaling"] = values["ddp.samples_per_s_2gpu"] / values["ddp.samples_per_s_1gpu"]
        path.write_text(json.dumps(values, indent=1))
        print(f"DDP world {world}: {samples_per_s:.2f} samples/s (per-GPU batch {args.batch})", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
