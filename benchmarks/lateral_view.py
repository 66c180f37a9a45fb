"""Does the lateral view help the tiny phantom model?  Effusion F1 with one view vs two.

    python benchmarks/lateral_view.py [--out data/lateral_study] [--n 2000] [--size 128]

Builds the same phantoms twice (seed = run.seed, so the frontal images and reports are identical):
frontal only, and frontal + lateral studies (``--views frontal,lateral``).  Both runs share the
phrase tokenizer and the stage-1 encoder, which is pretrained on the *frontal* images' labels (stage 1
reads single images); stage 2 then trains the LLM side on one view or on both (``model.max_images: 2``).
Prints and writes ``<out>/lateral_view.json``: per-finding F1 (CheXpert-style labeler) of the held-out
test reports for both runs.  About twice the quick start's time (~10 min on a quiet 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINDINGS = ("Pleural Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation", "Lung Lesion")


def run(out: Path, n: int, size: int, views: str, extra: list) -> dict:
    from xraygpt.common.config import Config
    from xraygpt.datasets import phantoms
    from xraygpt.quickstart import CONFIG, ensure_encoder, ensure_tokenizer, evaluate
    from xraygpt.train import run_training

    name = "two_views" if "lateral" in views else "frontal"
    data = out / name
    shared = out / "shared"
    options = [f"datasets.phantoms.build_info.storage={data}", f"model.tokenizer={shared}/tokenizer.model",
               f"model.vit_path={shared}/eva_vit_tiny.pth", f"model.q_former_model={shared}/blip2_qformer_tiny.pth",
               f"run.output_dir={out}/runs", f"run.job_id={name}", f"run.cache_dir={data}/feature_cache", *extra]
    cfg = Config({"cfg_path": str(REPO / CONFIG), "options": options})
    if not (data / "filter_cap.json").is_file():
        phantoms.main(["--out", str(data), "--n", str(n), "--seed", str(cfg.run_cfg.seed), "--size", str(size),
                       "--views", views])
    shared.mkdir(parents=True, exist_ok=True)
    ensure_tokenizer(Path(cfg.model_cfg.tokenizer), data / "filter_cap.json", 2000)
    ensure_encoder(cfg, 1000)  # stage 1 on the frontal labels (skipped when the files exist)
    start = time.perf_counter()
    run_training(cfg)
    weights = Path(cfg.run_cfg.output_dir) / name / "model_best.safetensors"
    scores = evaluate(cfg, weights, "test", int(cfg.run_cfg.valid_max_new_tokens))["scores"]
    ce = scores["report"]["clinical_efficacy"]
    return {"views": views, "train_and_eval_seconds": round(time.perf_counter() - start),
            "f1": {f: ce["per_observation"][f]["f1"] for f in FINDINGS}, "micro_f1": ce["micro"]["f1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "lateral_study")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    from xraygpt.common.cli import setup_logging

    setup_logging()
    results = [run(args.out, args.n, args.size, "frontal", []),
               run(args.out, args.n, args.size, "frontal,lateral", ["model.max_images=2"])]
    (args.out / "lateral_view.json").write_text(json.dumps(results, indent=2) + "\n")
    for result in results:
        f1 = "  ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in result["f1"].items())
        print(f"{result['views']:>16}: micro F1 {result['micro_f1']:.3f}  {f1}  ({result['train_and_eval_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
