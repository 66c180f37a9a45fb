"""Labelling speed of the CheXpert-style labeler, on one core.

    python benchmarks/labeler_speed.py [--reports ../shared/sample_data/labeler_dev/reports.jsonl] [--repeats 5]

Reports CPU-time throughput (``time.process_time``: what one core does, independent of other load on
the machine) and wall-clock throughput, both with the clause cache cleared before each pass ("cold":
every distinct sentence is parsed once per pass, as when labelling a new corpus) and with it warm
(a second pass over the same corpus). Without the shared reports it labels the phantom reports.
Target (issue 13): >= 2,000 reports/s cold, CPU time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "sample_data" / "labeler_dev" / "reports.jsonl"


def load_texts(path: Path) -> list:
    if path.is_file():
        return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    import numpy as np

    from xraygpt.datasets import phantoms

    rng = np.random.default_rng(0)
    print(f"{path} not found: labelling 1000 phantom reports instead")
    return [phantoms.write_report(phantoms.sample_findings(rng), rng) for _ in range(1000)]


def one_pass(texts: list, cold: bool) -> tuple:
    from xraygpt.evaluation import chexpert_labeler

    if cold:
        chexpert_labeler._clause_mentions.cache_clear()
    cpu, wall = time.process_time(), time.perf_counter()
    for text in texts:
        chexpert_labeler.label_report(text)
    return len(texts) / (time.process_time() - cpu), len(texts) / (time.perf_counter() - wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=DEFAULT, help="reports.jsonl with a 'text' per line")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    texts = load_texts(args.reports)
    one_pass(texts, cold=True)  # import and regex compilation out of the timing
    for cold in (True, False):
        runs = [one_pass(texts, cold) for _ in range(args.repeats)]
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"{'cold' if cold else 'warm'} cache: {cpu:8.0f} reports/s (CPU time)  {wall:8.0f} reports/s (wall)  "
              f"{len(texts)} reports, median of {args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
