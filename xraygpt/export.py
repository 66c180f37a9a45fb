"""``python -m xraygpt.export --cfg-path X.yaml --to hf-blip2 OUT/``: the model as a transformers BLIP-2 folder.

The folder loads with ``Blip2ForConditionalGeneration.from_pretrained(OUT)`` and
``AutoProcessor.from_pretrained(OUT)``, so serving engines that know BLIP-2 can run it
(docs/serving.md). LoRA-trained models are merged (default) or written with a peft adapter.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from xraygpt.common.cli import run_cli, setup_logging
from xraygpt.common.config import Config, ConfigError, add_config_arguments

logger = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export the model to another framework's folder layout.")
    add_config_arguments(parser)
    parser.add_argument("--to", required=True, choices=["hf-blip2"], help="target layout")
    parser.add_argument("out", type=Path, help="folder to write (must be new or empty, unless --overwrite)")
    parser.add_argument("--lora", default="merge", choices=["merge", "adapter"],
                        help="LoRA-trained LLM: merge the adapters into the weights (default) or write lora_adapter/")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="cast the weights (default: as loaded)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    import torch

    from xraygpt.conversation.loading import build_model, eval_processor_config
    from xraygpt.models.hf_blip2 import check_target, export_hf_blip2

    check_target(args.out, args.overwrite)
    from xraygpt.processors.image_processors import CLIP_MEAN, CLIP_STD

    cfg = Config(args)
    processor_cfg = eval_processor_config(cfg)
    if processor_cfg.get("name") not in (None, "blip2_image_eval"):
        raise ConfigError(f"--to hf-blip2 reproduces the blip2_image_eval processor; this config uses {processor_cfg.get('name')!r}")
    model = build_model(cfg, "cpu")
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    export_hf_blip2(model, args.out, image_mean=processor_cfg.get("mean") or CLIP_MEAN,
                    image_std=processor_cfg.get("std") or CLIP_STD, lora=args.lora, dtype=dtype,
                    overwrite=args.overwrite, source=str(args.cfg_path))
    print(f"exported to {args.out}")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
