"""The product's own entry points at full XrayGPT size, timed as a user runs them (issue 11).

    python benchmarks/product_paths.py --tokenizer-dir DIR --weights-tool PATH/make_realsize_weights.py --out OUT

One command, one device call (~8 min on one H200). It writes random weights in the ORIGINAL release formats
(``weights/``, git-ignored) with the shared tool, then runs, each in its own process with its own timeout:

* ``cli``    ``python -m xraygpt.generate`` on 64 JPEGs at batch 8: start -> first report, images/s, tokens/s;
* ``chat``   the demo's loading code (``xraygpt.demo.load_chat``: load + warm-up) -> ready, then a 5-turn chat
             through ``Chat.stream_answer`` (questions of different lengths, 200 new tokens, the UI's defaults):
             time to first streamed piece and tokens/s per turn, GPU peak; 300 greedy tokens for the int8 check;
* ``int8``   the same with ``model.low_resource: true`` (torchao int8 weight-only): ready, memory, tokens/s,
             greedy agreement with bf16 over 300 tokens (eager-in-graph and compiled blocks);
* ``decode`` the decode step variants on the LLM alone (transformers forward / our step unfused / fused /
             fused + compiled blocks) at batch 1 and 32, plus a kernel profile of one eager step;
* ``train``  ``train.py`` for 200 steps at batch 8 on JPEGs with 4 workers: start -> first step, steady samples/s.

The Gradio HTTP turn is not measured where gradio is not installed (the GPU machine): ``chat`` then measures
the demo's model load + warm-up to ready, which is everything ``demo.py`` does before ``launch``.
Results: ``OUT/product_paths.json``, ``OUT/product_paths.md`` (also appended to ``--results``), logs in OUT.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
CHAT_QUESTIONS = [
    "Describe the given chest x-ray image in detail.",
    "Is there any sign of pleural effusion?",
    "Compare the left and right lung fields, including the costophrenic angles, the hila and the apices, "
    "and say whether any opacity, nodule or consolidation is present and where exactly it is located.",
    "Why?",
    "Write the impression as a short list of findings with the most important first, then say which "
    "follow-up imaging, if any, would be reasonable for a patient of this age.",
]


# ------------------------------------------------------------------------------------------ helpers
def emit(record: dict) -> None:
    """Children report results as one JSON line with this marker; the parent collects them."""
    print("@@RESULT " + json.dumps(record), flush=True)


class Child:
    """A child process whose output lines are echoed with their arrival time (seconds since its start)."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict | None = None):
        self.name, self.cmd = name, cmd
        self.lines: list[tuple[float, str]] = []
        self.results: dict = {}
        self.log = (log_dir / f"{name}.log").open("w")
        self.t0 = time.time()
        full_env = {**os.environ, "PP_T0": repr(self.t0), "PYTHONUNBUFFERED": "1", **(env or {})}
        print(f"[{name}] $ {' '.join(cmd)}", flush=True)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            at = time.time() - self.t0
            line = line.rstrip("\n")
            self.lines.append((at, line))
            self.log.write(f"{at:8.2f} {line}\n")
            self.log.flush()
            if line.startswith("@@RESULT "):
                self.results.update(json.loads(line[len("@@RESULT "):]))
            if not line.startswith("@@RESULT ") and ("%|" not in line):
                print(f"[{self.name} {at:6.1f}s] {line[:300]}", flush=True)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
            print(f"[{self.name}] killed after {timeout:.0f} s", flush=True)
        self.reader.join(timeout=5)
        self.log.close()
        self.results["exit_code"] = code
        self.results["wall_s"] = round(time.time() - self.t0, 2)
        return code


def write_jpegs(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """Smooth chest-film-like grey images with noise, saved as JPEG (quality 90) like OpenI's."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for index in range(count):
        cx, cy = rng.uniform(0.35, 0.65, 2)
        lungs = np.exp(-(((xx - cx + 0.18) / 0.14) ** 2 + ((yy - cy) / 0.3) ** 2)) + \
            np.exp(-(((xx - cx - 0.18) / 0.14) ** 2 + ((yy - cy) / 0.3) ** 2))
        pixels = 200 - 120 * lungs + rng.standard_normal((size, size), dtype=np.float32) * 12
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(path, quality=90)
        paths.append(path)
    return paths


def write_openi(folder: Path, count: int, size: int) -> None:
    """An OpenI-layout dataset (filter_cap.json + image/<id>.jpg) with report-like captions."""
    sys.path.insert(0, str(BENCH))
    from make_tokenizer_32k import sentences

    images = write_jpegs(folder / "image", count, size, seed=1)
    captions = sentences(count, seed=3)
    annotations = [{"image_id": p.stem, "caption": c.split(" ###Doctor: ")[-1]} for p, c in zip(images, captions)]
    (folder / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))


# ------------------------------------------------------------------------------------------ children
def _t0() -> float:
    return float(os.environ.get("PP_T0", time.time()))


def child_chat(args) -> int:
    """Demo load + warm-up -> ready, then 5 streamed turns; greedy ids for the int8 comparison."""
    import torch

    from xraygpt import demo
    from xraygpt.common.decoding_settings import CHAT_DEFAULTS
    from xraygpt.models import graph_decoding

    new_tokens: list[int] = []
    original = graph_decoding.FastGenerator.generate

    def counting(self, *a, **k):  # benchmark-only: exact number of generated tokens per call
        out = original(self, *a, **k)
        new_tokens.append(int(out.shape[1]))
        return out

    graph_decoding.FastGenerator.generate = counting
    from xraygpt.common.cli import setup_logging

    setup_logging()
    argv = ["--cfg-path", args.cfg, "--device", args.device] + (["--options", *args.options] if args.options else [])
    chat = demo.load_chat(demo.build_parser().parse_args(argv))
    ready = time.time() - _t0()
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    emit({"ready_s": round(ready, 2), "load_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None})
    print(f"ready after {ready:.1f} s", flush=True)
    state = chat.new_state()
    chat.upload_img(str(args.image), state)
    settings = dataclasses.replace(CHAT_DEFAULTS, max_new_tokens=args.turn_tokens)  # the UI's defaults (sampling, top_p 0.9)
    turns = []
    for number, question in enumerate(CHAT_QUESTIONS, start=1):
        chat.ask(question, state)
        prompt_tokens = chat.context_length(state.conversation.prompt(), state.image_features)
        start = time.perf_counter()
        first = None
        for _reply in chat.stream_answer(state, settings):
            if first is None:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        tokens = new_tokens[-1] if new_tokens else 0
        turn = {"turn": number, "prompt_tokens": prompt_tokens, "new_tokens": tokens, "ttfp_ms": round(1e3 * (first or total), 1),
                "total_s": round(total, 3), "tokens_per_s": round(tokens / total, 1)}
        turns.append(turn)
        print(json.dumps(turn), flush=True)
    model = chat.model
    generator = graph_decoding.get_fast_generator(model.llama_model) if cuda else None
    emit({"turns": turns, "runners": generator.runners_built if generator else None,
          "captures": generator.captures() if generator else None,
          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None})
    # 300 greedy tokens on a fixed image: tokens/s at batch 1 on the product model, ids for the int8 check.
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(model.device)
    n = args.greedy_tokens
    exact = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, stop_strings=[], return_ids=True)
    greedy = {}
    variants = [("default", None)] + ([("uncompiled", False)] if args.uncompiled_variant else [])
    if not n:
        variants = []
    for name, compiled in variants:
        if compiled is not None:
            graph_decoding._GENERATORS.pop(model.llama_model, None)
            graph_decoding.get_fast_generator(model.llama_model, compile_layers=compiled)
        start = time.perf_counter()
        _, ids = model.generate(image, [CHAT_QUESTIONS[0]], **exact)
        first_call = time.perf_counter() - start
        start = time.perf_counter()
        reps = 3
        for _ in range(reps):
            _, ids = model.generate(image, [CHAT_QUESTIONS[0]], **exact)
        seconds = (time.perf_counter() - start) / reps
        greedy[name] = {"first_call_s": round(first_call, 2), "tokens_per_s": round(n / seconds, 1),
                        "ids": ids[0].tolist()}
        print(f"greedy {name}: {n / seconds:.1f} tok/s (first call {first_call:.1f} s)", flush=True)
    if args.reference_ids and Path(args.reference_ids).is_file():
        reference = json.loads(Path(args.reference_ids).read_text())
        for name, entry in greedy.items():
            entry["agreement_with_bf16"] = agreement(entry["ids"], reference)
    if args.save_ids and greedy:
        Path(args.save_ids).write_text(json.dumps(greedy["default"]["ids"]))
    emit({"greedy": {k: {kk: vv for kk, vv in v.items() if kk != "ids"} for k, v in greedy.items()},
          "final_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None})
    return 0


def agreement(a: list[int], b: list[int]) -> str:
    if a == b:
        return f"identical ({len(a)} tokens)"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"identical for {first} of {max(len(a), len(b))} tokens"


def child_decode(args) -> int:
    """Decode-step variants on the LLM alone: tokens/s at batch 1 and 32, agreement, one eager-step profile."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from xraygpt.models.graph_decoding import FastGenerator

    tiny = args.device == "cpu"
    cfg = LlamaConfig(hidden_size=64 if tiny else 4096, intermediate_size=128 if tiny else 11008,
                      num_hidden_layers=2 if tiny else 32, num_attention_heads=4 if tiny else 32,
                      vocab_size=32000, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    device = torch.device(args.device)
    with torch.device(device):
        llm = LlamaForCausalLM(cfg).to(torch.float32 if tiny else torch.bfloat16).eval()
    llm.requires_grad_(False)
    n = 12 if tiny else 300
    results = {}
    reference = {}
    for batch in (1, 32):
        gen = torch.Generator().manual_seed(batch)
        embeds = (torch.randn(batch, 64, cfg.hidden_size, generator=gen) * 0.02).to(device, llm.dtype)
        mask = torch.ones(batch, 64, dtype=torch.long, device=device)
        variants = [("hf", dict(step="hf")), ("fused", dict(step="fused")),
                    ("fused_compiled", dict(step="fused", compile_layers=True))]
        if batch == 1:
            variants.insert(1, ("modules", dict(step="modules")))
        for name, options in variants:
            try:
                decoder = FastGenerator(llm, **options)
                kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
                start = time.perf_counter()
                ids = decoder.generate(embeds, mask, **kwargs)
                sync(device)
                first_call = time.perf_counter() - start
                reps = 1 if tiny else 2
                start = time.perf_counter()
                for _ in range(reps):
                    ids = decoder.generate(embeds, mask, **kwargs)
                sync(device)
                total = (time.perf_counter() - start) / reps
                start = time.perf_counter()
                for _ in range(reps):
                    decoder.generate(embeds, mask, max_new_tokens=1, do_sample=False)
                sync(device)
                one = (time.perf_counter() - start) / reps
                step_ms = 1e3 * (total - one) / (n - 1)
                reference.setdefault(batch, ids[0].tolist())
                results[f"b{batch}.{name}"] = {
                    "first_call_s": round(first_call, 2), "tokens_per_s_per_seq": round(n / total, 1),
                    "aggregate_tokens_per_s": round(batch * n / total, 1), "decode_ms_per_step": round(step_ms, 3),
                    "ttft_ms": round(1e3 * one, 2), "row0_vs_hf_step": agreement(ids[0].tolist(), reference[batch]),
                }
                print(f"decode B={batch} {name}: {json.dumps(results[f'b{batch}.{name}'])}", flush=True)
                if batch == 1 and not tiny:
                    results[f"b1.{name}"]["profile"] = profile_eager_step(llm, options, embeds, mask)
                del decoder
            except Exception as exc:  # keep the other variants' numbers
                results[f"b{batch}.{name}"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                print(f"decode B={batch} {name} failed: {exc}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    weight_bytes = sum(p.numel() * p.element_size() for n_, p in llm.named_parameters() if "embed_tokens" not in n_)
    emit({"decode": results, "llm_weight_bytes": weight_bytes})
    return 0


def child_baseline(args) -> int:
    """transformers' Blip2ForConditionalGeneration at XrayGPT size in a fresh process: default ``generate`` and
    static cache + torch.compile (``cache_implementation="static"``), batch 1 then 32, until ``--deadline``."""
    import torch

    sys.path.insert(0, str(BENCH))
    from gpu_benchmark import FULL, TINY, build_baseline

    device = torch.device(args.device)
    start = time.perf_counter()
    model = build_baseline(TINY if device.type == "cpu" else FULL, device, torch.bfloat16)
    model.language_projection.to(torch.bfloat16)
    print(f"baseline built in {time.perf_counter() - start:.1f} s", flush=True)
    n, results = args.greedy_tokens, {}
    image_token = model.config.image_token_index
    wanted = set(args.baseline_modes.split(","))
    for batch, mode in ((1, "default"), (1, "static_compile"), (32, "default"), (32, "static_compile")):
        if f"b{batch}.{mode}" not in wanted:
            continue
        if time.time() > args.deadline:
            results[f"b{batch}.{mode}"] = {"skipped": "time budget of the device call"}
            continue
        gen = torch.Generator().manual_seed(batch)
        text = torch.randint(3, image_token, (batch, 16), generator=gen)
        ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, model.config.num_query_tokens), image_token), text], 1).to(device)
        pixels = torch.randn(batch, 3, 224, 224, generator=gen).to(device, torch.bfloat16)
        kwargs = dict(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                      min_new_tokens=n, do_sample=False)
        if mode == "static_compile":
            kwargs["cache_implementation"] = "static"
        try:
            timings = []
            for _ in range(2 if mode == "static_compile" else 1):  # the first static call compiles
                sync(device)
                t0 = time.perf_counter()
                model.generate(**kwargs)
                sync(device)
                timings.append(time.perf_counter() - t0)
            results[f"b{batch}.{mode}"] = {"first_call_s": round(timings[0], 2),
                                           "tokens_per_s_per_seq": round(n / timings[-1], 1),
                                           "aggregate_tokens_per_s": round(batch * n / timings[-1], 1)}
        except Exception as exc:  # noqa: BLE001 - report and go on
            results[f"b{batch}.{mode}"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(f"baseline B={batch} {mode}: {results[f'b{batch}.{mode}']}", flush=True)
        emit({"baseline": results})
    return 0


def profile_eager_step(llm, options, embeds, mask) -> dict:
    """Kernels and GPU time of decode steps run eagerly (what the captured graph replays)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from xraygpt.models.graph_decoding import FastGenerator

    decoder = FastGenerator(llm, use_cuda_graph=False, **options)
    decoder.generate(embeds, mask, max_new_tokens=4, do_sample=False)
    steps = 8
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.generate(embeds, mask, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in kernels) if kernels and hasattr(kernels[0], "device_time") else \
        sum(e.cuda_time for e in kernels)
    by_name: dict = {}
    for e in kernels:
        t = getattr(e, "device_time", None)
        t = e.cuda_time if t is None else t
        entry = by_name.setdefault(e.name[:70], [0, 0.0])
        entry[0] += 1
        entry[1] += t
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:8]
    del decoder
    return {"kernels_per_step": round(len(kernels) / (steps + 1), 1), "gpu_ms_per_step": round(total_us / 1e3 / (steps + 1), 3),
            "top": [[name, count // (steps + 1), round(us / 1e3 / (steps + 1), 3)] for name, (count, us) in top]}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ parent
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["chat", "decode", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline-modes", default="b1.default,b1.static_compile,b32.default,b32.static_compile")
    parser.add_argument("--budget-s", type=float, default=540, help="skip what would not fit in this wall time")
    parser.add_argument("--cfg", default="eval_configs/xraygpt_eval.yaml")
    parser.add_argument("--train-cfg", default="train_configs/xraygpt_openi_finetune.yaml")
    parser.add_argument("--options", nargs="*", default=[])
    parser.add_argument("--image", type=Path)
    parser.add_argument("--turn-tokens", type=int, default=200)
    parser.add_argument("--greedy-tokens", type=int, default=300)
    parser.add_argument("--reference-ids")
    parser.add_argument("--save-ids")
    parser.add_argument("--uncompiled-variant", action="store_true")
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO / "weights" / "tokenizer_32k")
    parser.add_argument("--weights-tool", type=Path, help="the shared make_realsize_weights.py")
    parser.add_argument("--weights", type=Path, default=REPO / "weights")
    parser.add_argument("--work", type=Path, default=Path("/tmp/product_paths"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--log-dir", type=Path, help="child logs (default: --out)")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny weights (script check on CPU)")
    parser.add_argument("--sections", default="weights,cli,chat,int8,decode,train")
    parser.add_argument("--cli-images", type=int, default=64)
    parser.add_argument("--cli-tokens", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--timeout-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.child == "chat":
        return child_chat(args)
    if args.child == "decode":
        return child_decode(args)
    if args.child == "baseline":
        return child_baseline(args)

    sections = set(args.sections.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict = {"env": environment(args)}
    py = sys.executable
    scale = args.timeout_scale

    log_dir = args.log_dir or args.out
    log_dir.mkdir(parents=True, exist_ok=True)

    def run(name: str, cmd: list[str], timeout: float, env: dict | None = None) -> Child:
        child = Child(name, cmd, log_dir, env)
        child.wait(timeout * scale)
        report[name] = child.results
        save(report, args)
        return child

    if "weights" in sections:
        cmd = [py, str(args.weights_tool), "--out", str(args.weights), "--tokenizer-dir", str(args.tokenizer_dir)]
        run("weights", cmd + (["--tiny"] if args.tiny else []), 150)
    image_size = 64 if args.tiny else 1024
    cli_images = write_jpegs(args.work / "cli_images", args.cli_images, image_size, seed=0)
    device_opts = ["--device", args.device]
    ids_file = args.work / "greedy_bf16.json"
    chat_cmd = [py, str(Path(__file__).resolve()), "--child", "chat", "--cfg", args.cfg, "--image", str(cli_images[0]),
                "--turn-tokens", str(args.turn_tokens), "--greedy-tokens", str(args.greedy_tokens), "--device", args.device]
    if "chat" in sections:
        run("chat", chat_cmd + ["--save-ids", str(ids_file)] + (["--options", *args.options] if args.options else []), 170)
    if "cli" in sections:
        out_file = args.work / "reports.jsonl"
        out_file.unlink(missing_ok=True)
        cmd = [py, "-m", "xraygpt.generate", "--cfg-path", args.cfg, "--images", str(args.work / "cli_images"),
               "--out", str(out_file), "--batch-size", "8", "--max-new-tokens", str(args.cli_tokens), "--no-progress",
               *device_opts] + (["--options", *args.options] if args.options else [])
        child = Child("cli", cmd, log_dir)
        first_report = None
        while child.proc.poll() is None and time.time() - child.t0 < 150 * scale:
            if first_report is None and out_file.exists() and out_file.stat().st_size > 0:
                first_report = time.time() - child.t0
            time.sleep(0.05)
        child.wait(5)
        if first_report is None and out_file.exists() and out_file.stat().st_size > 0:
            first_report = child.results["wall_s"]
        records = [json.loads(line) for line in out_file.read_text().splitlines()] if out_file.exists() else []
        batch_s = {}
        for r in records:
            batch_s.setdefault((r.get("created"), r.get("batch_seconds")), r.get("batch_seconds", 0))
        generate_s = sum(batch_s.values())
        tokens = sum(r.get("new_tokens", 0) for r in records)
        child.results.update({"first_report_s": round(first_report, 2) if first_report else None, "reports": len(records),
                              "generate_s": round(generate_s, 2), "new_tokens": tokens,
                              "images_per_s": round(len(records) / generate_s, 2) if generate_s else None,
                              "tokens_per_s": round(tokens / generate_s, 1) if generate_s else None,
                              "warm_up_line": next((l for _, l in child.lines if "warm-up at batch" in l), None)})
        report["cli"] = child.results
        save(report, args)
    if "train" in sections:
        write_openi(args.work / "openi", 256 if not args.tiny else 16, 64 if args.tiny else 1024)
        steps = args.train_steps
        options = [f"datasets.openi.build_info.storage={args.work / 'openi'}", "run.batch_size_train=8",
                   f"run.iters_per_epoch={steps}", "run.max_epoch=1", "run.log_freq=1", "run.num_workers=4",
                   f"run.output_dir={args.work / 'train_out'}", "run.warmup_steps=10"]
        if args.device == "cpu":
            options.append("run.device=cpu")
        child = run("train", [py, "train.py", "--cfg-path", args.train_cfg, "--options", *options, *args.options], 240)
        child.results.update(train_numbers(child.lines, steps, 8))
        report["train"] = child.results
        save(report, args)
    if "int8" in sections:
        run("int8", chat_cmd + ["--reference-ids", str(ids_file), "--uncompiled-variant", "--options",
                                "model.low_resource=true", *args.options], 200)
    if "decode" in sections:
        run("decode", [py, str(Path(__file__).resolve()), "--child", "decode", "--device", args.device], 240)
    if "baseline" in sections:
        deadline = started + args.budget_s - 15
        run("baseline", [py, str(Path(__file__).resolve()), "--child", "baseline", "--device", args.device,
                         "--greedy-tokens", str(args.greedy_tokens or 300), "--deadline", repr(deadline - 60)],
            max(deadline - time.time(), 10) / scale)
    report["env"]["wall_s"] = round(time.time() - started, 1)
    save(report, args)
    markdown = to_markdown(report)
    (args.out / "product_paths.md").write_text(markdown)
    if args.results:
        with args.results.open("a") as handle:
            handle.write("\n" + markdown)
    print(markdown, flush=True)
    return 0


def train_numbers(lines: list[tuple[float, str]], steps: int, batch: int) -> dict:
    """Time of the first logged step and samples/s over the second half, from the log lines' arrival times."""
    import re

    at_step = {}
    for at, line in lines:
        match = re.search(r"step (\d+)/(\d+) \|", line)
        if match:
            at_step[int(match.group(1))] = at
    if not at_step:
        return {"first_step_s": None}
    last = max(at_step)
    half = max(min(at_step), last // 2)
    steady = batch * (last - half) / (at_step[last] - at_step[half]) if last > half else None
    return {"first_step_s": round(at_step[min(at_step)], 2), "steps_logged": len(at_step),
            "steady_samples_per_s": round(steady, 1) if steady else None, "steady_window": [half, last]}


def environment(args) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "python": sys.version.split()[0]}
    try:
        import torch
        import transformers

        env.update(torch=torch.__version__, transformers=transformers.__version__,
                   device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    except Exception as exc:  # noqa: BLE001 - the environment line is informative only
        env["error"] = str(exc)
    return env


def save(report: dict, args) -> None:
    (args.out / "product_paths.json").write_text(json.dumps(report, indent=1, default=str))


def to_markdown(report: dict) -> str:
    """The results section for RESULTS.md; targets get their status, causes are added by hand after a run."""
    env = report.get("env", {})
    rows = [f"## Product paths at real size (`benchmarks/product_paths.py`, {env.get('date')})", "",
            f"{env.get('device')}, torch {env.get('torch')}, transformers {env.get('transformers')}; random weights in the "
            "original formats (`.bin` shards), a trained 32,000-piece SentencePiece tokenizer "
            "(`benchmarks/make_tokenizer_32k.py`). Times from process start. Wall "
            f"{env.get('wall_s')} s.", "", "| path | measured |", "|---|---|"]

    def row(name, text):
        rows.append(f"| {name} | {text} |")

    cli = report.get("cli", {})
    if cli:
        row("batch CLI, 64 JPEGs, batch 8, up to 300 new tokens",
            f"first report written {cli.get('first_report_s')} s after start; {cli.get('images_per_s')} images/s, "
            f"{cli.get('tokens_per_s')} tokens/s while generating ({cli.get('new_tokens')} tokens in {cli.get('generate_s')} s); "
            f"wall {cli.get('wall_s')} s, exit {cli.get('exit_code')}")
    for key, label in (("chat", "demo load + warm-up (bf16)"), ("int8", "demo load + warm-up (int8, torchao)")):
        chat = report.get(key, {})
        if not chat:
            continue
        row(label, f"ready {chat.get('ready_s')} s after start; GPU peak {chat.get('peak_gib')} GiB "
                   f"(load {chat.get('load_peak_gib')}); runners {chat.get('runners')}, graphs captured {chat.get('captures')}")
        for turn in chat.get("turns", []):
            row(f"{key} turn {turn['turn']} ({turn['prompt_tokens']}-token context)",
                f"first piece {turn['ttfp_ms']} ms; {turn['new_tokens']} tokens in {turn['total_s']} s = {turn['tokens_per_s']} tokens/s")
        for name, g in (chat.get("greedy") or {}).items():
            row(f"{key} greedy 300 tokens, batch 1 ({name} decode step)",
                f"{g.get('tokens_per_s')} tokens/s (first call {g.get('first_call_s')} s)"
                + (f"; vs bf16: {g['agreement_with_bf16']}" if "agreement_with_bf16" in g else ""))
    decode = (report.get("decode") or {}).get("decode", {})
    for key, d in decode.items():
        if "error" in d:
            row(f"decode {key}", f"error: {d['error']}")
            continue
        prof = d.get("profile")
        extra = f"; eager step: {prof['kernels_per_step']} kernels, {prof['gpu_ms_per_step']} ms GPU" if prof else ""
        row(f"decode {key}", f"{d['tokens_per_s_per_seq']} tokens/s per sequence, {d['aggregate_tokens_per_s']} aggregate, "
                             f"{d['decode_ms_per_step']} ms/step, TTFT {d['ttft_ms']} ms, first call {d['first_call_s']} s; "
                             f"row 0 vs transformers-forward step: {d['row0_vs_hf_step']}{extra}")
    for key, b in ((report.get("baseline") or {}).get("baseline") or {}).items():
        row(f"baseline (transformers Blip2ForConditionalGeneration, own process) {key}",
            ", ".join(f"{k} {v}" for k, v in b.items()))
    train = report.get("train", {})
    if train:
        row(f"train.py, batch 8, {train.get('steps_logged')} steps, 1024x1024 JPEGs, 4 workers",
            f"first optimizer step {train.get('first_step_s')} s after start; steady {train.get('steady_samples_per_s')} "
            f"samples/s (steps {train.get('steady_window')}); wall {train.get('wall_s')} s, exit {train.get('exit_code')}")
    weights = report.get("weights", {})
    if weights:
        row("writing the weights (shared tool)", f"{weights.get('wall_s')} s")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
