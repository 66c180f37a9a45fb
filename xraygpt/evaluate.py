"""``python test.py --cfg-path eval_configs/X.yaml``: generate reports for test splits and score them.

Builds the model (``model.arch``) and every dataset under ``datasets:`` from the config, generates a
text for each sample of the chosen splits in batches, scores them with
:func:`xraygpt.evaluation.score_reports` and writes, into the output folder:

* ``metrics.json``: corpus metrics, clinical efficacy (per observation, micro, macro), VQA scores,
  the generation settings and the tokenizer/Java notes;
* ``samples.jsonl`` / ``samples.csv``: one row per sample: dataset, split, image id, prompt, prediction,
  reference, per-sample metrics and the CheXpert labels of both texts;
* ``rexrank.json`` (study id -> generated report) and ``clinical_efficacy.png`` (per-observation F1 with
  95% bootstrap CIs, agreement by reference label).

``python -m xraygpt.evaluate compare RUN_A RUN_B`` compares two such output folders (paired differences,
CIs and p-values; see :mod:`xraygpt.evaluation.compare`).

Samples of the datasets named by ``--vqa-datasets`` (or carrying a ``question`` string: entries marked
``"task": "vqa"`` in the annotations) are scored as VQA:
the prompt is the question and the ``caption`` the reference answer. Unreadable images follow
``run.on_bad_sample``; with ``skip`` they are counted in ``metrics.json`` (``skipped_samples``).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from xraygpt.common.cli import run_cli, setup_logging
from xraygpt.common.config import Config, ConfigError, add_config_arguments
from xraygpt.common.device import pick_device
from xraygpt.common.schema import with_flags
from xraygpt.evaluation.scoring import add_learned_metrics, format_summary, score_reports
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
    parser.add_argument("--max-new-tokens", type=int,
                        help="longest report to generate, in tokens (default: generation.max_new_tokens, 300)")
    parser.add_argument("--num-beams", type=int, help="beam width, 1 = greedy (default: generation.num_beams, 1)")
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
    parser.add_argument(
        "--structured", action="store_true",
        help="also score structured reports per field (status per observation, laterality, location, severity); "
             "references are read from the reference texts in extract mode",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="resamples of studies for the 95%% confidence intervals (0: none)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument("--no-figure", action="store_true", help="do not draw clinical_efficacy.png")
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
        builder = builder_cls(ds_cfg, on_bad_sample=cfg.run.on_bad_sample) if takes_policy else builder_cls(ds_cfg)
        # Every split is scored as test data: the train split too gets the eval processor (no random crops,
        # the model's image size), never the training augmentation.
        takes_stage = "eval_processors" in inspect.signature(builder.build_datasets).parameters
        built = builder.build_datasets(eval_processors=True) if takes_stage else builder.build_datasets()
        for split in splits:
            if split in built and built[split] is not None:
                found.append((name, split, built[split]))
            else:
                logger.warning("dataset %s has no '%s' split (has: %s)", name, split, ", ".join(built) or "none")
    if not found:
        raise ConfigError(f"none of the datasets in {cfg.cfg_path} has split(s) {list(splits)}")
    return found


def write_outputs(out_dir: Path, records: List[Dict[str, Any]], result: Dict[str, Any],
                  settings: Dict[str, Any], figure: bool = True) -> List[Path]:
    """metrics.json, the per-sample table, the ReXrank JSON and (optionally) the figure; returns the paths."""
    from xraygpt.common.fileio import atomic_write_json
    from xraygpt.evaluation.tables import sample_rows, write_rexrank, write_sample_table

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(records, result["per_sample"])
    written = write_sample_table(out_dir, rows)
    if any(not r.get("question") for r in rows):
        written.append(write_rexrank(out_dir, rows))
    metrics = {k: v for k, v in result.items() if k != "per_sample"}
    metrics["settings"] = settings
    written.insert(0, atomic_write_json(out_dir / "metrics.json", metrics))
    if figure and result.get("report"):
        from xraygpt.evaluation.figures import plot_result

        written.append(plot_result(out_dir / "clinical_efficacy.png", result, title=str(settings.get("config", ""))))
    return written


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        from xraygpt.evaluation.compare import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = Config(args)
    run = cfg.run
    splits = args.splits or run.test_splits or ["test"]
    batch_size = args.batch_size or run.batch_size_eval
    device = str(pick_device(args.device or run.device))
    out_dir = Path(args.out) if args.out else Path(run.output_dir) / "eval"
    generation = with_flags(cfg.generation, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    generation_kwargs = generation.generate_kwargs()

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
        bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed, groups=[r["image_id"] for r in records],
    )
    add_learned_metrics(result, records, dataclasses.asdict(cfg.evaluation))
    result["skipped_samples"] = skipped
    if args.structured:
        from xraygpt.evaluation.structured_scores import format_structured
        from xraygpt.structured.evaluation import add_structured_scores

        add_structured_scores(result, records, model, str(cfg.cfg_path), generation_kwargs)
    settings = {"config": str(cfg.cfg_path), "splits": splits, "batch_size": batch_size, "device": device,
                "limit": args.limit, "generation": generation_kwargs, "vqa_datasets": args.vqa_datasets}
    written = write_outputs(out_dir, records, result, settings, figure=not args.no_figure)
    print(format_summary(result))
    if args.structured:
        print(format_structured(result["structured"]))
    print(f"wrote {', '.join(p.name for p in written)} to {out_dir} ({len(records)} samples"
          f"{f', {skipped} unreadable samples skipped' if skipped else ''})")
    return 0


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
