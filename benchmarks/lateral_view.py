"""Does the lateral view help the tiny phantom model?  Finding F1 with one view vs two.

    python benchmarks/lateral_view.py [--out data/lateral_study] [--n 2000] [--size 128] [--options KEY=VALUE ...]

Builds the same phantoms twice (seed = run.seed, so the frontal images and reports are identical):
frontal only, and frontal + lateral studies (``--views frontal,lateral``).  Both share one phrase
tokenizer.  Stage 1 (the label-supervised encoder) reads single images, so which images it learned
from matters: an encoder trained on frontal images only has never seen a lateral, which would bias the
comparison against two views.  So the benchmark is a 2 x 2: stage 2 on one view or on both
(``model.max_images: 2``), each over two stage-1 encoders, one trained on the frontal images' labels
(as the quick start) and one on every image of the two-view studies (frontal and lateral, each with its
study's labels, same steps).  The fair comparison is the one over the same encoder.

Prints and writes ``<out>/lateral_view.json`` after each run: per-finding F1 (CheXpert-style labeler) of
the held-out test reports, and the paired difference two views - one view (same encoder, and across the
encoders) with a paired-bootstrap 95% CI over test studies and an approximate-randomisation p-value.
Four stage-2 runs plus two stage-1 runs: 33 min measured on the shared 2-core machine (load 3-5).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINDINGS = ("Pleural Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation", "Lung Lesion")
ENCODERS = ("frontal_images", "every_view")
DATASETS = {"frontal": "frontal", "two_views": "frontal,lateral"}


def labels_of_every_view(data: Path) -> Path:
    """A ``labels.json`` with one entry per image of each study (frontal and lateral), its study's labels."""
    from xraygpt.common.fileio import atomic_write_json

    target = data / "labels_every_view.json"
    if not target.is_file():
        entries = json.loads((data / "labels.json").read_text(encoding="utf-8"))
        per_image = [{**e, "image": path} for e in entries for path in e.get("images", [e["image"]])]
        atomic_write_json(target, per_image)
    return target


def config(out: Path, dataset: str, encoder: str, extra: List[str]) -> Any:
    from xraygpt.common.config import Config
    from xraygpt.quickstart import CONFIG

    data, weights = out / dataset, out / f"encoder_{encoder}"
    name = f"{dataset}__{encoder}"
    options = [f"datasets.phantoms.build_info.storage={data}", f"model.tokenizer={out}/tokenizer.model",
               f"model.vit_path={weights}/eva_vit_tiny.pth", f"model.q_former_model={weights}/blip2_qformer_tiny.pth",
               f"run.output_dir={out}/runs", f"run.job_id={name}", f"run.cache_dir={out}/feature_cache/{name}",
               "run.overwrite=true", *extra]
    return Config({"cfg_path": str(REPO / CONFIG), "options": options})


def prepare(out: Path, n: int, size: int, seed: int, encoder_steps: int, options: List[str],
            encoders: Sequence[str] = ENCODERS) -> None:
    """Both phantom sets, the tokenizer and the stage-1 ``encoders`` (each step skipped when its files exist)."""
    from xraygpt.datasets import phantoms
    from xraygpt.quickstart import ensure_tokenizer
    from xraygpt.common.schema import with_flags
    from xraygpt.tasks.encoder_pretraining import run_encoder_pretraining

    for dataset, views in DATASETS.items():
        if not (out / dataset / "filter_cap.json").is_file():
            phantoms.main(["--out", str(out / dataset), "--n", str(n), "--seed", str(seed), "--size", str(size),
                           "--views", views])
    ensure_tokenizer(out / "tokenizer.model", out / "frontal" / "filter_cap.json", 2000)
    labels = {"frontal_images": out / "frontal" / "labels.json", "every_view": labels_of_every_view(out / "two_views")}
    for encoder in encoders:
        cfg = config(out, "frontal", encoder, options)
        if not Path(cfg.model_cfg.q_former_model).is_file():
            run_encoder_pretraining(cfg, labels[encoder], with_flags(cfg.pretrain, steps=encoder_steps))


def train_and_score(out: Path, dataset: str, encoder: str, options: List[str], train: bool = True) -> Dict[str, Any]:
    """Stage 2 on one view or both, then the test reports scored; ``train=False`` scores an existing run."""
    from xraygpt.quickstart import evaluate
    from xraygpt.train import run_training

    cfg = config(out, dataset, encoder, [*(["model.max_images=2"] if dataset == "two_views" else []), *options])
    start = time.perf_counter()
    if train:
        run_training(cfg)
    weights = Path(cfg.run_cfg.output_dir) / str(cfg.run_cfg.job_id) / "model_best.safetensors"
    result = evaluate(cfg, weights, "test", int(cfg.run_cfg.valid_max_new_tokens), meteor=False, bootstrap=1000)
    scores = result["scores"]
    ce = scores["report"]["clinical_efficacy"]
    intervals = (scores.get("confidence_intervals") or {}).get("metrics", {})
    reports = [r for r in result["records"] if not r["question"]]
    return {"dataset": dataset, "encoder": encoder, "train_and_eval_seconds": round(time.perf_counter() - start),
            "test_reports": len(reports), "micro_f1": ce["micro"]["f1"],
            "f1": {f: ce["per_observation"][f]["f1"] for f in FINDINGS},
            "f1_ci": {f: [intervals.get(f"CE_f1/{f}", {}).get(k) for k in ("low", "high")] for f in FINDINGS},
            "reports": [{"image_id": r["image_id"], "prediction": r["prediction"], "reference": r["reference"]}
                        for r in reports]}


def paired(two: Dict[str, Any], one: Dict[str, Any]) -> Dict[str, Any]:
    """Two views - one view on the same test studies: paired-bootstrap CI and randomisation p per metric."""
    from xraygpt.evaluation.bootstrap import clinical_metrics, paired_test
    from xraygpt.evaluation.chexpert_labeler import label_reports

    by_id = {r["image_id"]: r for r in one["reports"]}
    ids = [r["image_id"] for r in two["reports"]]
    if sorted(ids) != sorted(by_id):
        raise ValueError("the one-view and two-view runs were scored on different test studies")
    refs = label_reports([r["reference"] for r in two["reports"]])
    metrics_two = clinical_metrics(label_reports([r["prediction"] for r in two["reports"]]), refs)
    metrics_one = clinical_metrics(label_reports([by_id[i]["prediction"] for i in ids]), refs)
    names = ["CE_micro_f1", *(f"CE_f1/{f}" for f in FINDINGS)]
    tested = paired_test({k: metrics_two[k] for k in names}, {k: metrics_one[k] for k in names}, ids)
    return {k: {"diff": v["diff"], "ci": [v["low"], v["high"]], "p_value": v["p_value"]} for k, v in tested.items()}


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    done = {(r["dataset"], r["encoder"]): r for r in runs}
    # Same encoder is the fair pair; across encoders: two views against the best single-view set-up.
    comparisons = {f"two_views__{two} - frontal__{one}": paired(done[("two_views", two)], done[("frontal", one)])
                   for two in ENCODERS for one in ENCODERS if ("two_views", two) in done and ("frontal", one) in done}
    return {"runs": [{k: v for k, v in r.items() if k != "reports"} for r in runs],
            "two_views_minus_frontal": comparisons, "reports": {f"{r['dataset']}__{r['encoder']}": r["reports"] for r in runs}}


def earlier_runs(path: Path) -> List[Dict[str, Any]]:
    """The runs (with their reports) of an earlier ``lateral_view.json``, so a partial re-run keeps them."""
    if not path.is_file():
        return []
    summary = json.loads(path.read_text(encoding="utf-8"))
    return [{**r, "reports": summary["reports"][f"{r['dataset']}__{r['encoder']}"]} for r in summary["runs"]]


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "lateral_study")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42, help="phantom seed (the config's run.seed)")
    parser.add_argument("--encoder-steps", type=int, default=1000, help="stage-1 steps of each encoder")
    parser.add_argument("--encoders", default="every_view,frontal_images",
                        help="stage-1 encoders to run stage 2 over, in order (the fair pair, every_view, first); the "
                             "runs of the others are kept from an earlier lateral_view.json")
    parser.add_argument("--score-only", action="store_true",
                        help="score runs that already have model_best.safetensors instead of training them again")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args()
    from xraygpt.common.cli import setup_logging
    from xraygpt.common.fileio import atomic_write_json

    setup_logging()
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not encoders or set(encoders) - set(ENCODERS):
        parser.error(f"--encoders takes a comma-separated subset of {','.join(ENCODERS)}")
    prepare(args.out, args.n, args.size, args.seed, args.encoder_steps, args.options, encoders)
    runs = [r for r in earlier_runs(args.out / "lateral_view.json") if r["encoder"] not in encoders]
    for encoder in encoders:
        for dataset in DATASETS:
            trained = (args.out / "runs" / f"{dataset}__{encoder}" / "model_best.safetensors").is_file()
            runs.append(train_and_score(args.out, dataset, encoder, args.options, train=not (args.score_only and trained)))
            summary = summarise(runs)
            atomic_write_json(args.out / "lateral_view.json", summary)
            r = runs[-1]
            f1 = "  ".join(f"{k} {_f(v)}" for k, v in r["f1"].items())
            print(f"{r['dataset']:>9} / encoder {r['encoder']:<14}: micro F1 {_f(r['micro_f1'])}  {f1}  "
                  f"({r['train_and_eval_seconds']} s)", flush=True)
    for pair, diffs in summary["two_views_minus_frontal"].items():
        for name, d in diffs.items():
            diff = "n/a" if d["diff"] is None else f"{d['diff']:+.3f}"
            print(f"{pair:<44} {name:24s} {diff}  "
                  f"95% CI [{_f(d['ci'][0])}, {_f(d['ci'][1])}]  p {_f(d['p_value'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
