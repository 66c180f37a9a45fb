"""A tiny real MiniGPT-4 (ViT + Q-Former + 2-layer LLaMA) on the stand-in data, for the FSDP tests.

Run as ``python -m tests.fsdp_support --cfg-path X.yaml`` (also under torchrun) to train it in a subprocess.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict

from tests.train_support import BASE_CONFIG, register
from xraygpt.common.registry import registry
from xraygpt.models.mini_gpt4 import MiniGPT4

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE / "fixtures" / "seed_reference" / "tokenizer"

TINY_MODEL: Dict[str, Any] = {
    "arch": "slow_mini_gpt4", "model_type": "tiny", "image_size": 8, "vit_path": None, "q_former_model": None,
    "vision_config": {"width": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 4},
    "qformer_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32, "cross_attention_freq": 1},
    "num_query_token": 2,
    "llama_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 64},
    "tokenizer": str(TOKENIZER), "llm_dtype": "fp32", "vit_precision": "fp32",
    "freeze_vit": True, "freeze_qformer": True, "freeze_llm": False, "max_txt_len": 16,
    "use_fast_generation": False, "compile_llm": False,
}


def write_config(folder: Path, run: Dict[str, Any] | None = None, model: Dict[str, Any] | None = None,
                 name: str = "config.yaml") -> Path:
    """A tiny MiniGPT-4 job on the stand-in data; outputs in ``folder/out``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(
        BASE_CONFIG,
        {"model": {**TINY_MODEL, **(model or {})}, "datasets": {"standin_toy": {"augment": False}},
         "run": {"output_dir": str(folder / "out"), "max_epoch": 1, "init_lr": 3e-3, "valid_splits": [],
                 **(run or {})}},
    )
    path = folder / name
    OmegaConf.save(cfg, path)
    return path


class SlowMiniGPT4(MiniGPT4):
    """MiniGPT-4 that sleeps ``TINY_STEP_DELAY`` seconds per forward, so a test can kill a run mid-way."""

    def forward(self, samples):
        if os.environ.get("TINY_STEP_DELAY"):
            time.sleep(float(os.environ["TINY_STEP_DELAY"]))
        return super().forward(samples)


register()
if "slow_mini_gpt4" not in registry.names("model"):
    registry.register_model("slow_mini_gpt4")(SlowMiniGPT4)

if __name__ == "__main__":
    from xraygpt.common.cli import run_cli
    from xraygpt.train import main

    run_cli(lambda: main(sys.argv[1:]))
