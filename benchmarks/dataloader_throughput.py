"""DataLoader throughput with the eval processor, on synthetic phantoms.

    python benchmarks/dataloader_throughput.py [--data data/phantoms] [--n 512] [--workers 0 1 2]

Without --data a temporary phantom set is generated first.  Reports images/s
for each worker count (one warm-up batch excluded), plus the phantom
generator's own speed.  Numbers depend on the machine and its load: compare
runs made on the same machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure_loader(dataset, workers: int, batch_size: int) -> float:
    import torch

    from xraygpt.datasets import collate

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate, persistent_workers=False
    )
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up and first decode
    start, images = time.perf_counter(), 0
    for batch in iterator:
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="phantom/medvqa folder (default: generate a temporary one)")
    parser.add_argument("--n", type=int, default=512, help="images to generate when --data is not given")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    import torch

    from xraygpt.datasets import phantoms
    from xraygpt.datasets.builders import PhantomBuilder

    torch.set_num_threads(1)  # the processor's tensor ops; workers are the parallelism being measured
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "phantoms"
            start, cpu = time.perf_counter(), time.process_time()
            phantoms.generate_dataset(data, n=args.n, seed=0)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(f"phantom generation: {args.n / wall:.0f} images/s wall, {args.n / cpu:.0f} images/s per CPU second")
        section = {"build_info": {"storage": str(data)}, "vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": args.image_size}}}
        datasets = PhantomBuilder(section).build_datasets()
        # Every entry of every split, each image decoded and processed (report and VQA entries share images).
        dataset = torch.utils.data.ConcatDataset(list(datasets.values()))
        print(f"dataset: {len(dataset)} samples from {data}, eval processor {args.image_size}px, batch {args.batch_size}")
        for workers in args.workers:
            rate = measure_loader(dataset, workers, args.batch_size)
            print(f"num_workers={workers}: {rate:.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
