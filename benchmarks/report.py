"""Collects the benchmark's numbers, checks the issue's targets and writes results.json + RESULTS.md."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

# Why a target is missed, from the profiles and variants recorded in docs/performance.md; shown beside a miss.
CAUSES: dict[str, str] = {
    "decode_b1": "With the fused, compiled decode step (xraygpt/models/llama_decode.py) a step measured 4.70 ms "
                 "(211.9 tok/s, product_paths run A): the 129 GEMVs take ~3.5 ms near copy bandwidth (split-K "
                 "kernels for the 4096-wide outputs) and ~480 small kernels per step (cos/sin gathers, cache "
                 "writes, masks, SDPA) ~1.2 ms. The transformers-forward step measured 6.88 ms.",
    "floor_b1": "Same cause as decode B=1: 67% of the floor with the fused, compiled step (46% before it).",
    "peer_b1": "Same cause as decode B=1: the peer is itself compiled and replayed from CUDA graphs, so only the "
               "fused projections and the attention span separate us (1.47x measured in product_paths runs A/C).",
    "peer_b32": "Not profiled at batch 32; product_paths runs A/C measured 1.38x (5.95 vs 9.30 ms/step with the "
                "transformers forward in our graph).",
    "cache": "Physics of this workload: the frozen ViT-g + Q-Former forward is ~8% of a step's FLOPs at "
             "215 tokens (16 of 198 TFLOP at B=32), and the CUDA-graphed encoder already makes it cheap, so "
             "skipping it can give at most ~1.1x; the cache's value is not re-encoding and a smaller GPU footprint.",
}


PRODUCT_PATHS_HEADING = "## Product paths at real size"


@dataclass
class Target:
    key: str
    label: str
    value: str  # expression over report values (v[...])
    goal: float
    higher_is_better: bool = True
    unit: str = "x"


TARGETS = [
    Target("train_b8", "training B=8 vs baseline", "v['train.b8.ours.samples_per_s'] / v['train.b8.baseline.samples_per_s']", 1.3),
    Target("train_b32", "training B=32 vs baseline", "v['train.b32.ours.samples_per_s'] / v['train.b32.baseline.samples_per_s']", 1.3),
    Target("mfu_b32", "MFU B=32", "v['train.b32.ours.mfu']", 0.65, unit=""),
    Target("vs_seed", "training B=32 vs seed-like", "v['train.b32.ours.samples_per_s'] / v['train.seed_like.samples_per_s']", 8.0),
    Target("mem_b8", "training B=8 peak memory", "v['train.b8.ours.peak_gib']", 20.0, False, " GiB"),
    Target("mix", "length mix: grouped vs naive", "v['mix.grouped.samples_per_s'] / v['mix.naive.samples_per_s']", 1.5),
    Target("cache", "feature cache vs encoders (B=32)", "v['cache.b32.samples_per_s'] / v['train.b32.ours.samples_per_s']", 1.5),
    Target("decode_b1", "decode B=1", "v['gen.b1.ours.per_seq_tokens_per_s']", 220.0, unit=" tok/s"),
    Target("floor_b1", "decode B=1 share of bandwidth floor", "v['gen.b1.ours.floor_fraction']", 0.70, unit=""),
    Target("agg_b32", "aggregate decode B=32", "v['gen.b32.ours.aggregate_tokens_per_s']", 3000.0, unit=" tok/s"),
    Target("ttft", "time to first token B=1", "v['gen.b1.ours.ttft_ms']", 40.0, False, " ms"),
    Target("warmup", "first-call warm-up (capture) overhead", "v['gen.b1.ours.first_call_s'] - v['gen.b1.ours.total_s']", 60.0, False, " s"),
    Target("mem_inf", "bf16 inference peak B=1", "v['gen.b1.ours.peak_gib']", 16.0, False, " GiB"),
    Target("ddp", "DDP 2 GPUs vs 1", "v['ddp.scaling']", 1.85),
    Target("peer_b1", "decode B=1 vs static cache + compile", "v['gen.b1.ours.aggregate_tokens_per_s'] / v['gen.b1.peer.aggregate_tokens_per_s']", 1.5),
    Target("peer_b32", "decode B=32 vs static cache + compile", "v['gen.b32.ours.aggregate_tokens_per_s'] / v['gen.b32.peer.aggregate_tokens_per_s']", 1.5),
]


class Report:
    def __init__(self, out: Path, tiny: bool):
        self.out, self.tiny = out, tiny
        self.values: dict[str, object] = {}
        self.skipped: list[str] = []
        self.extra_text: dict[str, str] = {}

    def put(self, key: str, value) -> None:
        self.values[key] = value

    def merge_json(self, path: Path) -> None:
        if path.is_file():
            self.values.update(json.loads(path.read_text()))

    # ------------------------------------------------------------------ targets
    def check(self) -> list[tuple[Target, float | None, str]]:
        rows = []
        for target in TARGETS:
            try:
                value = float(eval(target.value, {}, {"v": self.values}))  # noqa: S307 - our own expressions
            except (KeyError, ZeroDivisionError, TypeError):
                value = float("nan")
            if not math.isfinite(value):
                rows.append((target, None, "not measured"))
                continue
            ok = value >= target.goal if target.higher_is_better else value <= target.goal
            rows.append((target, value, "met" if ok else "MISSED"))
        return rows

    def table(self) -> str:
        v = self.values
        lines = [f"{'metric':44s} {'ours':>12s} {'baseline':>12s} {'ratio':>7s}"]

        def row(label, ours_key, base_key=None, fmt="{:.1f}"):
            ours, base = v.get(ours_key), v.get(base_key) if base_key else None
            if ours is None:
                return
            o = fmt.format(ours)
            b = fmt.format(base) if isinstance(base, (int, float)) else ""
            r = f"{ours / base:.2f}" if isinstance(base, (int, float)) and base else ""
            lines.append(f"{label:44s} {o:>12s} {b:>12s} {r:>7s}")

        row("matmul ceiling TFLOP/s", "ceiling.matmul_tflops")
        row("copy ceiling GB/s", "ceiling.copy_gbps", fmt="{:.0f}")
        for b in (1, 2, 4, 8, 32):
            row(f"train B={b} samples/s", f"train.b{b}.ours.samples_per_s", f"train.b{b}.baseline.samples_per_s")
            row(f"train B={b} MFU", f"train.b{b}.ours.mfu", f"train.b{b}.baseline.mfu", "{:.3f}")
            row(f"train B={b} peak GiB", f"train.b{b}.ours.peak_gib", f"train.b{b}.baseline.peak_gib", "{:.2f}")
        row("train seed-like B=1 samples/s", "train.seed_like.samples_per_s")
        row("length mix grouped / naive samples/s", "mix.grouped.samples_per_s", "mix.naive.samples_per_s")
        row("feature cache / images (largest B) samples/s", f"cache.b32.samples_per_s", "train.b32.ours.samples_per_s")
        for b in (1, 2, 4, 8, 32):
            row(f"gen B={b} TTFT ms", f"gen.b{b}.ours.ttft_ms", f"gen.b{b}.baseline.ttft_ms")
            row(f"gen B={b} tok/s per sequence", f"gen.b{b}.ours.per_seq_tokens_per_s", f"gen.b{b}.baseline.per_seq_tokens_per_s")
            row(f"gen B={b} tok/s aggregate", f"gen.b{b}.ours.aggregate_tokens_per_s", f"gen.b{b}.baseline.aggregate_tokens_per_s")
            row(f"gen B={b} share of bandwidth floor", f"gen.b{b}.ours.floor_fraction", f"gen.b{b}.baseline.floor_fraction", "{:.2f}")
            row(f"gen B={b} peak GiB", f"gen.b{b}.ours.peak_gib", f"gen.b{b}.baseline.peak_gib", "{:.2f}")
        row("gen B=1 fast path off tok/s", "gen.b1.ours_fast_off.tokens_per_s")
        row("DDP samples/s 2 GPUs / 1 GPU", "ddp.samples_per_s_2gpu", "ddp.samples_per_s_1gpu")
        lines.append("")
        lines.append(f"{'target':44s} {'value':>12s} {'goal':>12s}  status")
        for target, value, status in self.check():
            shown = "" if value is None else f"{value:.2f}{target.unit}"
            goal = f"{'>=' if target.higher_is_better else '<='} {target.goal:g}{target.unit}"
            lines.append(f"{target.label:44s} {shown:>12s} {goal:>12s}  {status}")
        for key in ("gen.greedy_identical_to_hf_path", "gen.graph_identical_to_eager_step"):
            if key in v:
                lines.append(f"{key}: {v[key]}")
        if self.skipped:
            lines.append("skipped: " + "; ".join(self.skipped))
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.out / "results.json", json.dumps(self.values, indent=1, sort_keys=True, default=str))
        _atomic_write(self.out / "RESULTS.md", self.markdown() + self._kept_sections())

    def _kept_sections(self) -> str:
        """Sections other scripts appended to an existing RESULTS.md (product_paths.py) survive a rewrite."""
        path = self.out / "RESULTS.md"
        text = path.read_text() if path.exists() else ""
        start = text.find(PRODUCT_PATHS_HEADING)
        return "\n" + text[start:] if start >= 0 else ""

    def markdown(self) -> str:
        v = self.values
        lines = [
            "# GPU benchmark results" + (" (TINY CPU smoke run - not a measurement)" if self.tiny else ""),
            "",
            f"Written by `benchmarks/gpu_benchmark.py` (one run) on {v.get('env.date')}: {v.get('env.device')}, "
            f"torch {v.get('env.torch')}, transformers {v.get('env.transformers')}, python {v.get('env.python')}.",
            "Both models: full XrayGPT size (EVA ViT-g 1408x39, Q-Former 768x12 with 32 queries, Vicuna-7B 4096x32, "
            "vocab 32000), random weights (library initialisers, std 0.02), bf16, built on the GPU in one process; "
            "baseline = transformers `Blip2ForConditionalGeneration` with a LLaMA text model; identical inputs.",
            "Timings: CUDA events, warm-up, median of >= 10 repetitions (transformers' default `generate`, "
            "~10 s per 300-token run, is timed over fewer: see `slow_gen_reps`).",
            "",
            "MFU = FLOPs / step time / measured bf16 matmul ceiling, with FLOPs per sample = "
            "4 * P_llm * T (LLM forward + activation-gradient backward; frozen weights get no weight gradients; "
            "P_llm excludes the input embedding table) + 2 * P_vit * 257 + 2 * P_qformer(query path) * 32 + "
            "2 * P_qformer(cross-attn K/V) * 257; attention-score FLOPs (<1%) are not counted. "
            f"T = {v.get('train.seq_len')} tokens (BOS + 7 template + 32 image + 16 prompt + 160 caption tokens - "
            "the template's first piece is 7 tokens with this tokenizer, not 8), "
            f"FLOPs per sample = {v.get('train.flops_per_sample', float('nan')):.4g}.",
            "Bandwidth floor of decoding = bytes of LLM weights read per step (all but the input embedding table) / "
            f"measured copy bandwidth = {v.get('gen.floor_ms_per_token', float('nan')):.2f} ms per step.",
            "",
            "## Table",
            "",
            "```",
            self.table(),
            "```",
            "",
            "## Targets",
            "",
            "| target | measured | goal | status | cause of a miss |",
            "|---|---|---|---|---|",
        ]
        for target, value, status in self.check():
            shown = "-" if value is None else f"{value:.2f}{target.unit}"
            goal = f"{'>=' if target.higher_is_better else '<='} {target.goal:g}{target.unit}"
            cause = CAUSES.get(target.key, "") if status != "met" else ""
            lines.append(f"| {target.label} | {shown} | {goal} | {status} | {cause} |")
        lines += ["", "## Every number", "", "| key | value |", "|---|---|"]
        for key in sorted(v):
            if key.startswith("_"):
                continue
            value = v[key]
            shown = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
            lines.append(f"| `{key}` | {shown} |")
        for name, text in self.extra_text.items():
            lines += ["", f"## {name}", "", "```", text, "```"]
        return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
