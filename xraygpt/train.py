"""``python train.py --cfg-path X.yaml [--options k=v ...]``: fine-tune a model.

Also runs under ``torchrun --nproc_per_node=N train.py ...`` (one process per GPU, DDP).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Dict

from xraygpt.common.cli import run_cli, setup_logging
from xraygpt.common.config import Config, add_config_arguments
from xraygpt.common.dist_utils import cleanup_distributed, init_distributed
from xraygpt.common.registry import registry
from xraygpt.common.seeding import set_seed

logger = logging.getLogger("xraygpt.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train an xraygpt model from a YAML config.")
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in <output_dir>/<job_id> (same as run.overwrite=true)")
    plan = parser.add_argument_group("memory plan")
    plan.add_argument("--dry-run", action="store_true",
                      help="print parameter, gradient, optimizer and activation memory per GPU, load nothing, exit")
    plan.add_argument("--processes", type=int, default=None,
                      help="plan for this many GPUs (default: WORLD_SIZE under torchrun, else 1)")
    plan.add_argument("--gpu-memory-gib", type=float, default=None,
                      help="GPU memory to check the plan against (default: the smallest visible GPU), e.g. 80, 141")
    plan.add_argument("--seq-len", type=int, default=None,
                      help="tokens per sample (default: query tokens + model.max_txt_len + 24 for the prompt)")
    return parser


def run_training(cfg: Config) -> Dict[str, Any]:
    """Build task, datasets, model and runner from ``cfg`` and train (or only validate)."""
    run = cfg.run
    dist_info = init_distributed(run)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    else:
        cfg.pretty_print()
    try:
        set_seed(run.seed)
        task = registry.get_task_class(run.task).setup_task(cfg)
        datasets = task.build_datasets()
        model = task.build_model()
        runner = registry.get_runner_class(run.runner)(cfg, task, model, datasets, dist_info=dist_info)
        if run.evaluate:
            return {"validation": runner.validate()}
        return runner.train()
    finally:
        cleanup_distributed()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.overwrite:
        args.options = [*args.options, "run.overwrite=true"]
    cfg = Config(args)
    if args.dry_run:
        from xraygpt.runners.memory_plan import describe_plan

        print(describe_plan(cfg.model_cfg, cfg.run, args.processes, args.gpu_memory_gib, args.seq_len))
        return 0
    run_training(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
