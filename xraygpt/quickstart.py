"""The README's first command: the whole job end to end on the embedded default, on CPU.

    python -m xraygpt.quickstart

1. generate the synthetic phantom dataset (``data/phantoms``) if it is absent;
2. fit a SentencePiece tokenizer to its reports;
3. stage 1: pretrain the tiny ViT + Q-Former on the phantoms' finding labels (``xraygpt.tasks.encoder_pretraining``),
   written where ``model.vit_path`` / ``model.q_former_model`` point, unless those files exist;
4. stage 2: train ``train_configs/phantom_tiny.yaml`` (frozen encoders, cached features; llama_proj + LLaMA learn);
5. generate reports for the held-out test split, score them (CheXpert-style finding F1, BLEU, ...)
   and print a sample next to its ground truth.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from xraygpt.common.cli import add_debug_argument, run_cli, setup_logging
from xraygpt.common.config import ConfigError
from xraygpt.common.errors import DataError
from xraygpt.common.registry import registry

logger = logging.getLogger("xraygpt.quickstart")

CONFIG = "train_configs/phantom_tiny.yaml"


def ensure_phantoms(folder: Path, count: int, seed: int, size: int) -> None:
    if (folder / "filter_cap.json").is_file():
        logger.info("phantom dataset found at %s", folder)
        return
    from xraygpt.datasets import phantoms

    logger.info("generating %d phantoms of %d px into %s", count, size, folder)
    code = phantoms.main(["--out", str(folder), "--n", str(count), "--seed", str(seed), "--size", str(size)])
    if code:
        raise DataError(f"generating phantoms into {folder} failed (exit code {code}, message above)")


def ensure_tokenizer(path: Path, annotations: Path, vocab_size: int) -> None:
    if path.is_file():
        logger.info("tokenizer found at %s", path)
        return
    from xraygpt.tasks.tokenizer_training import texts_from_annotations, train_sentencepiece

    train_sentencepiece(texts_from_annotations([annotations]), path, vocab_size, phrases=True)
    logger.info("trained a %d-piece SentencePiece tokenizer on the phantom reports: %s", vocab_size, path)


def ensure_encoder(cfg: Any, steps: Optional[int]) -> None:
    """Stage 1, when the config names encoder files that do not exist yet."""
    paths = [cfg.model.vit_path, cfg.model.q_former_model]
    if not all(paths):
        logger.info("the config names no pretrained encoder files: stage 1 skipped")
        return
    if all(Path(p).is_file() for p in paths):
        logger.info("pretrained tiny encoder found: %s, %s", *paths)
        return
    from xraygpt.common.schema import with_flags
    from xraygpt.tasks.encoder_pretraining import run_encoder_pretraining

    run_encoder_pretraining(cfg, settings=with_flags(cfg.pretrain, steps=steps))


def evaluate(cfg: Any, weights: Path, split: str, max_new_tokens: int, meteor: bool = True,
             bootstrap: int = 1000) -> Dict[str, Any]:
    """Generate for every ``split`` sample with the trained weights (``model_best.safetensors``) and score it.

    METEOR is computed when Java is present (as the literature reports it); without Java the summary says so.
    """
    from xraygpt.inference.records import generate_records
    from xraygpt.evaluation import score_reports

    cfg.model = dataclasses.replace(cfg.model, ckpt=str(weights))
    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    datasets = task.build_datasets()
    if split not in datasets:
        raise ConfigError(f"the phantom dataset has no '{split}' split (built: {sorted(datasets)})",
                          fix="set run.test_splits to one of those")
    model = task.build_model().eval()  # encoders from stage 1's files, the rest from ``weights``
    records, _ = generate_records(model, [("phantoms", split, datasets[split])], cfg.run.batch_size_eval,
                                  {"max_new_tokens": max_new_tokens})
    scores = score_reports([r["prediction"] for r in records], [r["reference"] for r in records],
                           [r["question"] for r in records], meteor=meteor, bootstrap=bootstrap,
                           groups=[r["image_id"] for r in records])
    return {"records": records, "scores": scores}


def print_sample(records: List[Dict[str, Any]]) -> None:
    reports = [r for r in records if not r["question"]] or records
    sample = reports[0]
    print(f"\n--- sample report ({sample['image_id']}) ---")
    print(f"prompt:       {sample['prompt']}")
    print(f"generated:    {sample['prediction']}")
    print(f"ground truth: {sample['reference']}")
    vqa = [r for r in records if r["question"]]
    if vqa:
        print(f"question:     {vqa[0]['prompt']}\nanswer:       {vqa[0]['prediction']}  (truth: {vqa[0]['reference']})")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and evaluate the tiny phantom model end to end (CPU).")
    parser.add_argument("--cfg-path", default=CONFIG)
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--phantoms", type=int, default=2000, help="images to generate when data is absent")
    parser.add_argument("--phantom-size", type=int, default=128, help="side in pixels of generated phantoms")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--encoder-steps", type=int, default=None,
                        help="stage-1 steps when the encoder files are absent (default: pretrain.steps, 1000)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (its Java start-up takes ~30 s)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    setup_logging()

    from xraygpt.common.config import Config
    from xraygpt.train import run_training

    start = time.perf_counter()
    # The quick start owns its job folder: a rerun trains it again (run.overwrite) instead of being refused.
    cfg = Config({"cfg_path": args.cfg_path, "options": ["run.overwrite=true", *args.options]})
    if not cfg.run.job_id:
        raise ConfigError("the quick start reads its results from run.output_dir/run.job_id: set run.job_id")
    data_dir = Path(next(iter(cfg.datasets.values())).build_info.storage)
    ensure_phantoms(data_dir, args.phantoms, cfg.run.seed, args.phantom_size)
    ensure_tokenizer(Path(cfg.model.tokenizer), data_dir / "filter_cap.json", args.vocab_size)
    prepared = time.perf_counter()
    ensure_encoder(cfg, args.encoder_steps)
    pretrained = time.perf_counter()

    state = run_training(cfg)
    trained = time.perf_counter()
    job_dir = Path(cfg.run.output_dir) / cfg.run.job_id
    history = state.get("history", [])
    if history:
        print("\nvalidation loss by epoch: " + ", ".join(f"{h['epoch'] + 1}: {h['loss']:.3f}" for h in history))

    split = (cfg.run.test_splits or ["test"])[0]
    weights = job_dir / "model_best.safetensors"
    result = evaluate(cfg, weights, split, cfg.run.valid_max_new_tokens, meteor=not args.no_meteor)
    done = time.perf_counter()
    from xraygpt.evaluation import format_summary

    print(f"\n=== held-out '{split}' split: {len(result['records'])} samples, weights {weights} ===")
    print(format_summary(result["scores"]))
    print_sample(result["records"])
    summary = result["scores"]["summary"]
    (job_dir / "quickstart_metrics.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nfinding-level F1 (CheXpert-style labeler, micro): {summary.get('CE_micro_f1')}  |  "
        f"data+tokenizer {prepared - start:.0f} s, encoder pretraining {pretrained - prepared:.0f} s, "
        f"training {trained - pretrained:.0f} s, "
        f"evaluation {done - trained:.0f} s, total {done - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
