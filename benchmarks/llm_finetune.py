"""Fine-tuning the LLM at real size on one GPU, through the training runner (``xraygpt.train.run_training``).

  (a) LoRA r=16 on q/k/v/o, batch 8 x 215 tokens: samples/s and peak memory.
  (b) Full LLM fine-tuning, ``run.strategy: fsdp`` on one process + activation checkpointing + (fused) AdamW,
      fp32 master weights gathered in bf16: does it fit one H200, samples/s, peak memory and MFU
      (6 P T for the LLM plus 2 P x tokens for the frozen encoders' forward, over the GPU's dense bf16 peak).

The weights are random, in the original release formats, written by ``shared/tools/make_realsize_weights.py``
(``--make-weights`` runs it when ``--weights`` lacks them). The config is the real stage-2 one
(``train_configs/xraygpt_openi_finetune.yaml``) with its dataset swapped for synthetic 224 px images and
captions sized to 215 tokens per sample, and no checkpoints written.

    python3 benchmarks/llm_finetune.py --weights /tmp/w --make-weights

Each part runs in its own process (its own peak-memory counter; memory is returned in between), under
``--part-timeout`` seconds, and prints the runner's log as it goes. The results are appended as a markdown table
to benchmarks/RESULTS.md under "## LLM fine-tuning at real size (benchmarks/llm_finetune.py)".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOKENIZER = REPO / "tests" / "fixtures" / "seed_reference" / "tokenizer"
CONFIG = REPO / "train_configs" / "xraygpt_openi_finetune.yaml"
PEAK_BF16_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0}
SEQ_LEN, BATCH = 215, 8
PROMPT = "Describe the given chest x-ray image in detail please."
HEADING = "## LLM fine-tuning at real size (benchmarks/llm_finetune.py)"

PARTS: Dict[str, Dict[str, Any]] = {
    "a": {"title": "LoRA r=16 on q/k/v/o (frozen LLM, bf16 autocast)", "steps": 40,
          "model": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
          "run": {"strategy": "ddp", "amp": True}},
    "b": {"title": "full LLM, FSDP x1 + activation checkpointing + fused AdamW (fp32 master, bf16 compute)",
          "steps": 30,
          "model": {"freeze_llm": False, "llm_dtype": "fp32"},
          "run": {"strategy": "fsdp", "activation_checkpointing": True, "amp": False, "max_grad_norm": 1.0}},
}


def weight_paths(folder: Path) -> Dict[str, Path]:
    return {"vit_path": folder / "eva_vit_g.pth", "q_former_model": folder / "blip2_pretrained_flant5xxl.pth",
            "llama_model": folder / "Vicuna_Radiology_fp16", "ckpt": folder / "xraygpt_mimic_pretrain.pth"}


def make_weights(folder: Path, tokenizer_dir: Path = TOKENIZER) -> None:
    candidates = [Path(os.environ.get("XRAYGPT_SHARED", REPO.parent / "shared")), REPO / "shared"]
    tool = next((c / "tools" / "make_realsize_weights.py" for c in candidates
                 if (c / "tools" / "make_realsize_weights.py").is_file()), None)
    if tool is None:
        raise SystemExit(f"make_realsize_weights.py not found under {[str(c) for c in candidates]}")
    print(f"writing real-size random weights to {folder} with {tool} (~30 s, ~16 GB)", flush=True)
    subprocess.run([sys.executable, str(tool), "--out", str(folder), "--tokenizer-dir", str(tokenizer_dir)], check=True)


# ----------------------------------------------------------------------------------------------- child process
def register_synthetic_data(root: Path, tokenizer_path: Path, num_query: int, max_txt_len: int) -> int:
    """Register a builder of random 224 px images with captions of SEQ_LEN tokens per sample; returns the length."""
    import torch
    from torch.utils.data import Dataset

    from xraygpt.common.registry import registry
    from xraygpt.models.llm import load_tokenizer
    from xraygpt.models.prompting import build_train_batch, wrap_prompt

    tokenizer = load_tokenizer(tokenizer_path)
    template = "###Patient: {} ###Doctor: "
    caption = "Findings:"
    while build_train_batch(tokenizer, [wrap_prompt(PROMPT, template)], [caption + " the"], num_query, "###",
                            max_txt_len).input_ids.shape[1] <= SEQ_LEN:
        caption += " the"
    tokens = build_train_batch(tokenizer, [wrap_prompt(PROMPT, template)], [caption], num_query, "###",
                               max_txt_len).input_ids.shape[1]
    print(f"synthetic samples: {tokens} tokens each ({num_query} image slots)", flush=True)

    class Synthetic(Dataset):
        def __init__(self, size: int):
            self.size = size
            self.annotation = [{"caption": caption}] * size

        def __len__(self) -> int:
            return self.size

        def __getitem__(self, index: int) -> Dict[str, Any]:
            image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(index))
            return {"image": image, "prompt": PROMPT, "caption": caption, "image_id": str(index)}

        def collater(self, samples):
            return {"image": torch.stack([s["image"] for s in samples]), "prompt": [s["prompt"] for s in samples],
                    "caption": [s["caption"] for s in samples], "image_id": [s["image_id"] for s in samples]}

    defaults = root / "synthetic_defaults.yaml"
    defaults.write_text("datasets:\n  synthetic_reports:\n    size: 4096\n", encoding="utf-8")

    class SyntheticBuilder:
        DATASET_CONFIG_DICT = {"default": str(defaults)}

        def __init__(self, cfg: Any, on_bad_sample: str = "error"):
            self.cfg = cfg

        def build_datasets(self) -> Dict[str, Dataset]:
            return {"train": Synthetic(int(self.cfg.size))}

    if "synthetic_reports" not in registry.names("builder"):
        registry.register_builder("synthetic_reports")(SyntheticBuilder)
    return tokens


def run_part(name: str, weights: Path, out: Path, steps: int, eager: bool = False) -> Dict[str, Any]:
    import torch
    from omegaconf import OmegaConf

    import xraygpt  # noqa: F401 - registers models, tasks, runners
    from xraygpt.common.config import Config
    from xraygpt.models.model_config import model_config_from
    from xraygpt.runners.memory_plan import GIB, format_plan, meta_model, plan_memory
    from xraygpt.train import run_training

    part = PARTS[name]
    base = OmegaConf.load(CONFIG)
    # The tokenizer the weights were written with (a real 32,000-piece one on real-size runs).
    llm_folder = weight_paths(weights)["llama_model"]
    tokenizer = llm_folder if (llm_folder / "tokenizer.model").is_file() else TOKENIZER
    model = {**{k: str(v) for k, v in weight_paths(weights).items()}, "tokenizer": str(tokenizer), **part["model"]}
    if eager:
        model["compile_llm"] = False
    run = {"output_dir": str(out), "job_id": f"part_{name}", "batch_size_train": BATCH, "iters_per_epoch": steps,
           "max_epoch": 1, "warmup_steps": 2, "log_freq": 5, "num_workers": 4, "save_checkpoints": False,
           "device": "cuda", **part["run"]}
    cfg_dict = OmegaConf.merge(base, {"model": model, "run": run})
    cfg_dict.datasets = OmegaConf.create({"synthetic_reports": {"size": BATCH * (steps + 1)}})
    tokens = register_synthetic_data(out, tokenizer, int(base.model.get("num_query_token", 32)),
                                     int(cfg_dict.model.max_txt_len))
    path = out / f"part_{name}.yaml"
    OmegaConf.save(cfg_dict, path)
    cfg = Config({"cfg_path": str(path), "options": []})

    model_cfg = model_config_from(cfg.model_cfg)
    meta = meta_model(model_cfg)
    plan = plan_memory(meta, model_cfg, cfg.run_cfg, int(os.environ.get("WORLD_SIZE", 1)), tokens)
    cuda = torch.cuda.is_available()
    gpu_bytes = float(torch.cuda.get_device_properties(0).total_memory) if cuda else None
    print(format_plan(plan, gpu_bytes, assumed=False), flush=True)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    llm_params, vit_params, qformer_params = count(meta.llama_model), count(meta.visual_encoder), count(meta.qformer)
    del meta

    result: Dict[str, Any] = {"part": name, "title": part["title"] + (" [eager]" if eager else ""), "batch": BATCH, "tokens": tokens, "steps": steps,
                              "planned_gib": plan.bytes["total"] / GIB, "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
                              "trainable": plan.params["trainable"]}
    start = time.perf_counter()
    try:
        run_training(cfg)
        result["fits"] = True
    except torch.cuda.OutOfMemoryError as exc:
        result.update(fits=False, error=str(exc).splitlines()[0])
    result["wall_s"] = time.perf_counter() - start
    result["peak_gib"] = torch.cuda.max_memory_allocated() / GIB if cuda else float("nan")
    log = out / f"part_{name}" / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    rates = [r["samples_per_s"] for r in rows if r.get("kind") == "train"]
    steady = rates[2:] or rates[1:] or rates  # the first windows pay for warm-up
    if steady:
        result["samples_per_s"] = median(steady)
        image_tokens = 257  # EVA ViT-g at 224 px: 16 x 16 patches + class token
        flops = 6 * llm_params * tokens + 2 * vit_params * image_tokens + 2 * qformer_params * 32
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in result["gpu"]), None)
        world = int(os.environ.get("WORLD_SIZE", 1))
        result["gpus"] = world
        result["tflops"] = flops * result["samples_per_s"] / 1e12 / world  # per GPU
        result["mfu"] = result["tflops"] / peak if peak else None
    result["llm_params"] = llm_params
    if int(os.environ.get("RANK", 0)) == 0:
        (out / f"result_{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        print("RESULT " + json.dumps(result), flush=True)
    return result


# ----------------------------------------------------------------------------------------------- parent process
def table(results, with_heading: bool = True) -> str:
    lines = [HEADING, ""] if with_heading else []
    lines += [f"Batch {BATCH} x {SEQ_LEN} tokens per GPU, random weights in the original formats, through "
             "`xraygpt.train.run_training` with `train_configs/xraygpt_openi_finetune.yaml` (dataset swapped for "
             f"synthetic samples). Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
              "| part | GPUs | trainable params | fits | samples/s | peak GiB (rank 0) | planned GiB (--dry-run) | "
              "TFLOP/s per GPU | MFU |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = f"{r['samples_per_s']:.1f}" if r.get("samples_per_s") else "-"
        tflops = f"{r['tflops']:.0f}" if r.get("tflops") else "-"
        mfu = f"{r['mfu']:.2f}" if r.get("mfu") else "-"
        fits = "yes" if r.get("fits") else f"no ({r.get('error', 'did not finish')})"
        lines.append(f"| ({r['part']}) {r['title']} | {r.get('gpus', 1)} | {r.get('trainable', 0):,} | {fits} | {rate} | "
                     f"{r.get('peak_gib', float('nan')):.1f} | {r.get('planned_gib', float('nan')):.1f} | {tflops} | {mfu} |")
    lines += ["", "MFU: (6 x LLM params x tokens + 2 x encoder params x their tokens) per sample x samples/s over the "
              "GPU's dense bf16 peak; activation checkpointing's recomputation is not counted as useful work.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO / "weights")
    parser.add_argument("--make-weights", action="store_true", help="write the random weights when absent")
    parser.add_argument("--tokenizer-dir", type=Path, default=TOKENIZER,
                        help="tokenizer files copied into the written Vicuna folder (use a 32,000-piece one)")
    parser.add_argument("--parts", default="a,b")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per part (default: a 40, b 30)")
    parser.add_argument("--part-timeout", type=int, default=300, help="seconds per part, load included")
    parser.add_argument("--out", type=Path, default=REPO / "output" / "llm_finetune")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--eager", action="store_true", help="model.compile_llm=false in every part")
    parser.add_argument("--nproc", type=int, default=1,
                        help="GPUs per part through torchrun (same per-GPU batch; e.g. --parts b --nproc 2 for scaling)")
    parser.add_argument("--child", choices=sorted(PARTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        run_part(args.child, args.weights, args.out, args.steps or PARTS[args.child]["steps"], args.eager)
        return 0
    missing = [str(p) for p in weight_paths(args.weights).values() if not p.exists()]
    if missing:
        if not args.make_weights:
            raise SystemExit(f"missing weights {missing}: pass --make-weights to write random ones")
        make_weights(args.weights, args.tokenizer_dir)
    results = []
    for name in args.parts.split(","):
        print(f"\n=== part ({name}): {PARTS[name]['title']} ===", flush=True)
        (args.out / f"result_{name}.json").unlink(missing_ok=True)
        launcher = [sys.executable]
        if args.nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
        cmd = [*launcher, __file__, "--child", name, "--weights", str(args.weights), "--out", str(args.out)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        if args.eager:
            cmd.append("--eager")
        try:
            subprocess.run(cmd, timeout=args.part_timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        except subprocess.TimeoutExpired:
            print(f"part ({name}) ran past {args.part_timeout} s", flush=True)
        path = args.out / f"result_{name}.json"
        results.append(json.loads(path.read_text()) if path.is_file() else
                       {"part": name, "title": PARTS[name]["title"], "fits": False, "error": "no result"})
    existing = args.results.read_text(encoding="utf-8") if args.results.is_file() else ""
    text = table(results, with_heading=HEADING not in existing)
    print("\n" + text, flush=True)
    with open(args.results, "a", encoding="utf-8") as handle:
        handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
