"""Cost of the 1,000-resample bootstrap of every report metric, at 200 and 2,000 samples.

    python benchmarks/bootstrap_cost.py [--sizes 200 2000] [--resamples 1000]

Phantom reports stand in for references and generated reports (two independent draws per sample).
For each size it times, in CPU seconds: building the per-sample statistics, the 1,000 resamples of
all metrics (BLEU-1..4 and CIDEr-D recomputed per resample, ROUGE-L, clinical efficacy), and, for
scale, pycocoevalcap's own BLEU + CIDEr on a few materialised resamples (extrapolated to 1,000).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reports(n: int, seed: int) -> list:
    import numpy as np

    from xraygpt.datasets import phantoms

    rng = np.random.default_rng(seed)
    return [phantoms.write_report(phantoms.sample_findings(rng), rng) for _ in range(n)]


def measure(n: int, resamples: int, naive_draws: int = 3) -> dict:
    import numpy as np
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    from xraygpt.evaluation.bootstrap import bootstrap_intervals, report_metric_set, resample_weights
    from xraygpt.evaluation.chexpert_labeler import label_reports
    from xraygpt.evaluation.report_metrics import fallback_tokenize

    refs, preds = reports(n, 1), reports(n, 2)
    gts = {i: [fallback_tokenize(t)] for i, t in enumerate(refs)}
    res = {i: [fallback_tokenize(t)] for i, t in enumerate(preds)}
    rouge = {"ROUGE-L": list(np.random.default_rng(0).random(n))}  # its statistic is a per-sample mean
    cpu = time.process_time()
    metrics = report_metric_set(gts, res, rouge, label_reports(preds), label_reports(refs))
    built = time.process_time() - cpu
    cpu = time.process_time()
    bootstrap_intervals(metrics, list(range(n)), resamples, seed=0)
    resampled = time.process_time() - cpu
    weights = resample_weights(range(n), naive_draws, seed=1)
    cpu = time.process_time()
    for w in weights:
        idx = np.repeat(np.arange(n), w.astype(int))
        g2, r2 = {j: gts[i] for j, i in enumerate(idx)}, {j: res[i] for j, i in enumerate(idx)}
        Bleu(4).compute_score(g2, r2, verbose=0)
        Cider().compute_score(g2, r2)
    naive = (time.process_time() - cpu) / naive_draws * resamples
    return {"n": n, "statistics_s": built, "resamples_s": resampled, "naive_pycocoevalcap_s": naive}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    for n in args.sizes:
        r = measure(n, args.resamples)
        print(f"{r['n']:5d} samples: statistics {r['statistics_s']:.2f} s + {args.resamples} resamples "
              f"{r['resamples_s']:.2f} s CPU  (pycocoevalcap per resample, extrapolated: {r['naive_pycocoevalcap_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
