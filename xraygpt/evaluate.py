"""``python test.py --cfg-path eval_configs/X.yaml``: generate reports for test splits and score them.

Builds the model (``model.arch``) and every dataset under ``datasets:`` from the config, generates a
text for each sample of the chosen splits in batches, scores them with
:func:`xraygpt.evaluation.score_reports` and writes, into the output folder:

* ``metrics.json``: corpus metrics, clinical efficacy (per observation, micro, macro), VQA scores,
  the generation settings and the tokenizer/Java notes;
* ``samples.jsonl``: one line per sample: dataset, split, image id, prompt, prediction, reference,
  per-sample metrics and the CheXpert labels of both texts.

Samples of the datasets named by ``--vqa-datasets`` (or carrying a ``question`` string: entries marked
``"task": "vqa"`` in the annotations) are scored as VQA:
the prompt is the question and the ``caption`` the reference answer. Unreadable images follow
``run.on_bad_sample``; with ``skip`` they are counted in ``metrics.json`` (``skipped_samples``).
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from xraygpt.common.cli import run_cli, setup_logging
from xraygpt.common.config import Config, ConfigError, add_config_arguments
from xraygpt.common.device import pick_device
from xraygpt.common.fileio import atomic_write_text
from xraygpt.evaluation.scoring import format_summary, score_reports
from xraygpt.inference.records import generate_records

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "generate_records", "main", "score_reports", "write_outputs"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate reports for a test split and score them.")
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (default: <run.output_dir>/eval)")
    parser.add_argument("--splits", nargs="+", help="splits to evaluate (default: run.test_splits, else 'test')")
    parser.add_argument("--batch-size", type=int, help="generation batch size (default: run.batch_size_eval)")
    parser.add_argument("--limit", type=int, help="score only the first N samples of each split (smoke runs)")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: run.device; cuda falls back to cpu)")
    parser.add_argument("--max-new-tokens", type=int, default=300, help="longest report to generate, in tokens")
    parser.add_argument("--num-beams", type=int, default=1, help="beam width (1 = greedy)")
    parser.add_argument(
        "--java", choices=["auto", "require", "off"], default="auto",
        help="METEOR and the PTB tokenizer run in Java; 'auto' falls back (no METEOR) when java is missing",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~30 s of Java start-up)")
    parser.add_argument(
        "--vqa-datasets", nargs="+", default=[], metavar="NAME",
        help="datasets whose prompts are questions and captions answers (scored as VQA, not as reports)",
    )
    parser.add_argument(
        "--uncertain", choices=["negative", "positive", "ignore"], default="negative",
        help="how uncertain CheXpert labels count in clinical efficacy",
    )
    return parser


def build_splits(cfg: Config, splits: Sequence[str]) -> List[tuple]:
    """``[(dataset name, split, Dataset), ...]`` for every configured dataset that has the split."""
    from xraygpt.common.registry import registry

    if not cfg.datasets_cfg:
        raise ConfigError(f"{cfg.cfg_path} lists no datasets: add a 'datasets:' section with the test data")
    found = []
    for name, ds_cfg in cfg.datasets_cfg.items():
        builder_cls = registry.get_builder_class(name)
        # Builders that take the run-wide bad-sample policy get it (a dataset's own setting still wins).
        takes_policy = "on_bad_sample" in inspect.signature(builder_cls).parameters
        builder = builder_cls(ds_cfg, on_bad_sample=cfg.run_cfg.on_bad_sample) if takes_policy else builder_cls(ds_cfg)
        built = builder.build_datasets()
        for split in splits:
            if split in built and built[split] is not None:
                found.append((name, split, built[split]))
            else:
                logger.warning("dataset %s has no '%s' split (has: %s)", name, split, ", ".join(built) or "none")
    if not found:
        raise ConfigError(f"none of the datasets in {cfg.cfg_path} has split(s) {list(splits)}")
    return found


def write_outputs(out_dir: Path, records: List[Dict[str, Any]], result: Dict[str, Any],
                  settings: Dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{**record, **scored} for record, scored in zip(records, result["per_sample"])]
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    metrics = {k: v for k, v in result.items() if k != "per_sample"}
    metrics["settings"] = settings
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = Config(args)
    run = cfg.run_cfg
    splits = args.splits or list(run.test_splits) or ["test"]
    batch_size = args.batch_size or run.batch_size_eval
    device = str(pick_device(args.device or run.device))
    out_dir = Path(args.out) if args.out else Path(run.output_dir) / "eval"
    generation_kwargs = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}

    from xraygpt.conversation.loading import build_model

    found = build_splits(cfg, splits)  # data problems show before the slow model load
    model = build_model(cfg, device)
    records, skipped = generate_records(model, found, batch_size, generation_kwargs,
                                        device=device, limit=args.limit, num_workers=run.num_workers,
                                        vqa_datasets=args.vqa_datasets)
    if not records:
        raise ConfigError(f"the split(s) {splits} hold no samples: nothing to evaluate")
    result = score_reports(
        [r["prediction"] for r in records], [r["reference"] for r in records], [r["question"] for r in records],
        java=args.java, meteor=not args.no_meteor, uncertain=args.uncertain,
    )
    result["skipped_samples"] = skipped
    settings = {"config": str(cfg.cfg_path), "splits": splits, "batch_size": batch_size, "device": device,
                "limit": args.limit, "generation": generation_kwargs, "vqa_datasets": args.vqa_datasets}
    write_outputs(out_dir, records, result, settings)
    print(format_summary(result))
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'samples.jsonl'} ({len(records)} samples"
          f"{f', {skipped} unreadable samples skipped' if skipped else ''})")
    return 0


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
