"""xraygpt against the transformers BLIP-2 baseline at full XrayGPT size, in one process (issue 8).

    python benchmarks/gpu_benchmark.py --out DIR             # full size on the GPU, ~6 min on one H200
    python benchmarks/gpu_benchmark.py --tiny --device cpu   # every section at toy sizes, to test the script

Both models get random weights with their libraries' initialisers (normal, std 0.02: realistic scales),
built directly on the device; ours goes through the product's model code (registry -> MiniGPT4.from_config
with ``llama_config``), so every optimisation measured here is the one train.py / demo.py / the CLI run.
Results: a table on stdout (last), ``results.json`` and ``RESULTS.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_utils import GIB, PeakMemory, copy_ceiling, matmul_ceiling, param_bytes, param_count, synchronize, time_fn  # noqa: E402
from report import Report  # noqa: E402

TOKENIZER = REPO / "tests" / "fixtures" / "seed_reference" / "tokenizer"
PROMPT = " Describe the given chest x-ray image in detail please"


@dataclass
class Sizes:
    """Architecture and workload sizes; FULL is the real XrayGPT (EVA ViT-g, BLIP-2 Q-Former, Vicuna-7B)."""

    vision: dict = field(default_factory=dict)  # empty = the model code's real defaults
    qformer: dict = field(default_factory=dict)
    llama: dict = field(default_factory=lambda: dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        vocab_size=32000, max_position_embeddings=2048))
    queries: int = 32
    image_size: int = 224
    prompt_tokens: int = 16  # tokens after the image (the 8 before are fixed by the template)
    caption_tokens: int = 160
    train_batches: tuple = (1, 8, 32)
    gen_batches: tuple = (1, 8, 32)
    new_tokens: int = 300
    reps: int = 10
    warmup: int = 3
    gen_reps: int = 10
    slow_gen_reps: int = 1  # transformers' default generate: ~20 s per 300-token run on the H200
    mix_samples: int = 256
    mix_batch: int = 16
    mix_short: tuple = (20, 120)
    mix_long: tuple = (200, 450)
    matmul_n: int = 8192
    copy_bytes: int = 2 * GIB


FULL = Sizes()
TINY = Sizes(
    vision=dict(width=32, depth=2, num_heads=4, mlp_ratio=2.0, patch_size=14),
    qformer=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    llama=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               vocab_size=1000, max_position_embeddings=1024),
    queries=4, train_batches=(1, 2, 4), gen_batches=(1, 2, 4), new_tokens=12, reps=2, warmup=1, gen_reps=2,
    slow_gen_reps=1, mix_samples=16, mix_batch=4, mix_short=(5, 20), mix_long=(40, 60), matmul_n=256,
    copy_bytes=16 * 1024**2, caption_tokens=24, prompt_tokens=16)

VISION_DEFAULTS = dict(width=1408, depth=39, num_heads=16, mlp_ratio=4.3637, patch_size=14)
QFORMER_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


# ----------------------------------------------------------------------------------------------- models
def build_ours(sizes: Sizes, device: torch.device, dtype: str):
    """The product model through the registry, as train.py builds it (random weights, no files)."""
    import xraygpt  # noqa: F401 - registers everything
    from xraygpt.common.registry import registry

    cfg = dict(
        arch="mini_gpt4", vit_model="eva_clip_g", vit_path=None, image_size=sizes.image_size,
        vit_precision=dtype, vision_config=dict(sizes.vision), q_former_model=None,
        qformer_config=dict(sizes.qformer), num_query_token=sizes.queries, llama_model=None,
        llama_config=dict(sizes.llama), tokenizer=str(TOKENIZER), llm_dtype=dtype,
        max_txt_len=sizes.caption_tokens,
    )
    with torch.device(device):
        model = registry.get_model_class("mini_gpt4").from_config(cfg)
    return model.to(device)


def build_baseline(sizes: Sizes, device: torch.device, dtype: torch.dtype):
    """transformers' Blip2ForConditionalGeneration with a LLaMA text model of the same sizes."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig, LlamaConfig

    v = {**VISION_DEFAULTS, **sizes.vision}
    q = {**QFORMER_DEFAULTS, **sizes.qformer}
    vision = Blip2VisionConfig(hidden_size=v["width"], intermediate_size=int(v["width"] * v["mlp_ratio"]),
                               num_hidden_layers=v["depth"], num_attention_heads=v["num_heads"],
                               image_size=sizes.image_size, patch_size=v["patch_size"], qkv_bias=True,
                               layer_norm_eps=1e-6)
    qformer = Blip2QFormerConfig(hidden_size=q["hidden_size"], num_hidden_layers=q["num_hidden_layers"],
                                 num_attention_heads=q["num_attention_heads"], intermediate_size=q["intermediate_size"],
                                 cross_attention_frequency=2, encoder_hidden_size=v["width"])
    text = LlamaConfig(**sizes.llama, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=sizes.queries, image_token_index=sizes.llama["vocab_size"] - 1)
    with torch.device(device):
        model = Blip2ForConditionalGeneration(config)
    model.to(dtype)
    model.requires_grad_(False)
    model.language_projection.float().requires_grad_(True)  # projection-only, fp32 master weights like ours
    return model.eval()


def flops_per_sample(model, seq_len: int, image_tokens: int, queries: int) -> float:
    """2*P*T LLM forward + 2*P*T LLM backward (activation grads) + ViT and Q-Former forwards (matmul FLOPs).

    P excludes the input embedding table (a lookup); attention-score FLOPs (<1% here) are not counted.
    """
    llm = model.llama_model
    p_llm = param_count(llm, exclude=(llm.get_input_embeddings(),))
    p_vit = param_count(model.visual_encoder)
    cross_kv = sum(p.numel() for n, p in model.qformer.named_parameters()
                   if "crossattention" in n and (".key." in n or ".value." in n))
    p_q = param_count(model.qformer) - cross_kv
    return 4 * p_llm * seq_len + 2 * p_vit * image_tokens + 2 * p_q * queries + 2 * cross_kv * image_tokens


# ------------------------------------------------------------------------------------------------ inputs
def tokens_of(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(tokenizer, template: str, wanted: int) -> str:
    """A prompt whose text after the image ('</Img>' + prompt + ' ###Doctor: ') is ``wanted`` tokens."""
    after = template.split("{}")[1]
    prompt = PROMPT
    while tokens_of(tokenizer, "</Img>" + prompt + after) < wanted:
        prompt += " now"
    while tokens_of(tokenizer, "</Img>" + prompt + after) > wanted and " " in prompt.strip():
        prompt = prompt.rsplit(" ", 1)[0]
    return prompt


def caption_of(length: int) -> str:
    """A caption of about ``length`` tokens ('▁the' is one token in the fixture tokenizer)."""
    return "Findings:" + " the" * max(length - 2, 1)


@dataclass
class Inputs:
    images: torch.Tensor
    prompts: list
    captions: list


def make_inputs(model, sizes: Sizes, batch: int, device: torch.device, seed: int = 0) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, sizes.image_size, sizes.image_size, generator=gen).to(device)
    prompt = fit_prompt(model.tokenizer, model.config.prompt_template, sizes.prompt_tokens)
    return Inputs(images, [prompt] * batch, [caption_of(sizes.caption_tokens + 40)] * batch)


def baseline_batch(model, inputs: Inputs, image_token: int, train: bool):
    """The exact token layout our model builds, with BLIP-2's image placeholder id in the image slots."""
    from xraygpt.models.prompting import build_generation_batch, build_train_batch, wrap_prompt

    texts = [wrap_prompt(p, model.config.prompt_template) for p in inputs.prompts]
    if train:
        batch = build_train_batch(model.tokenizer, texts, inputs.captions, model.config.num_query_token,
                                  model.config.end_sym, model.config.max_txt_len)
    else:
        batch = build_generation_batch(model.tokenizer, texts, model.config.num_query_token)
    ids = batch.input_ids.masked_fill(batch.image_mask, image_token)
    return ids, batch.attention_mask, batch.labels


# ---------------------------------------------------------------------------------------------- training
def train_step_fn(forward, params, device: torch.device, amp: torch.dtype | None, scaler=None):
    """One optimizer step (AdamW on the trainable parameters) around ``forward() -> loss``."""
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05)

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = forward()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def measure_training(name, step, device, sizes, batch, flops, ceiling_tflops, own_bytes, report, key):
    with PeakMemory(device, own_bytes) as peak:
        timing = time_fn(step, device, reps=sizes.reps, warmup=sizes.warmup)
    sps = batch / (timing.median_ms / 1e3)
    mfu = flops * batch / (timing.median_ms / 1e3) / (ceiling_tflops * 1e12)
    report.put(f"{key}.samples_per_s", sps)
    report.put(f"{key}.step_ms", timing.median_ms)
    report.put(f"{key}.spread", timing.spread)
    report.put(f"{key}.peak_gib", peak.gib)
    report.put(f"{key}.mfu", mfu)
    print(f"  {name}: {sps:8.2f} samples/s  step {timing.median_ms:8.1f} ms  MFU {mfu:.3f}  peak {peak.gib:6.2f} GiB",
          flush=True)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type == "cuda" else None


def section_training(ours, base, sizes, device, report, ceiling):
    image_tokens = (sizes.image_size // ({**VISION_DEFAULTS, **sizes.vision})["patch_size"]) ** 2 + 1
    ours_params = [p for p in ours.parameters() if p.requires_grad]
    base_params = [p for p in base.parameters() if p.requires_grad]
    for batch in sizes.train_batches:
        inputs = make_inputs(ours, sizes, batch, device)
        samples = {"image": inputs.images, "prompt": inputs.prompts, "caption": inputs.captions}
        ids, mask, labels = baseline_batch(ours, inputs, base.config.image_token_index, train=True)
        seq_len = ids.shape[1]
        report.put("train.seq_len", seq_len)
        flops = flops_per_sample(ours, seq_len, image_tokens, sizes.queries)
        report.put("train.flops_per_sample", flops)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        print(f"training B={batch} T={seq_len}", flush=True)
        step = train_step_fn(lambda: base(pixel_values=inputs.images.to(base.dtype), input_ids=ids,
                                          attention_mask=mask, labels=labels).loss, base_params, device, amp_dtype(device))
        measure_training("baseline", step, device, sizes, batch, flops, ceiling, param_bytes(base), report,
                         f"train.b{batch}.baseline")
        ours.train()
        step = train_step_fn(lambda: ours(samples)["loss"], ours_params, device, amp_dtype(device))
        measure_training("ours    ", step, device, sizes, batch, flops, ceiling, param_bytes(ours), report,
                         f"train.b{batch}.ours")
        if batch == max(sizes.train_batches) and device.type == "cuda":
            profile_step(step, f"ours_b{batch}", report)
        del step
        gc.collect()
    return flops


def section_ablations(ours, sizes, device, report, ceiling, flops):
    """What each training optimisation buys, switched off one at a time on top of the others:
    regional compile (+ fused loss head), the graphed frozen encoder, the caption-only LM head."""
    from xraygpt.models import mini_gpt4
    from xraygpt.models.regional_compile import compile_decoder_layers, decompile_decoder_layers

    params = [p for p in ours.parameters() if p.requires_grad]
    encoder_graph, caption_loss = ours._encoder_graph, mini_gpt4.caption_lm_loss

    def hf_loss(llm, embeds, mask, labels, fused=False):
        return llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    variants = [("no_encoder_graph", dict(graph=False)),
                ("no_compile", dict(compile=False)),
                ("no_compile_hf_loss", dict(compile=False, hf=True)),
                ("none", dict(compile=False, hf=True, graph=False))]
    ours.train()
    try:
        for name, off in variants:
            ours._encoder_graph = None if off.get("graph") is False else encoder_graph
            mini_gpt4.caption_lm_loss = hf_loss if off.get("hf") else caption_loss
            if off.get("compile") is False:
                decompile_decoder_layers(ours.llama_model)
                ours.config.compile_llm, ours._llm_compiled = False, False
            for batch in sizes.train_batches[1:]:
                inputs = make_inputs(ours, sizes, batch, device)
                samples = {"image": inputs.images, "prompt": inputs.prompts, "caption": inputs.captions}
                step = train_step_fn(lambda: ours(samples)["loss"], params, device, amp_dtype(device))
                print(f"ablation B={batch}: {name}", flush=True)
                measure_training(name, step, device, sizes, batch, flops, ceiling, param_bytes(ours), report,
                                 f"train.b{batch}.ablate_{name}")
    finally:
        ours._encoder_graph, mini_gpt4.caption_lm_loss = encoder_graph, caption_loss
        ours.config.compile_llm = True
        if device.type == "cuda":
            ours._llm_compiled = compile_decoder_layers(ours.llama_model) > 0


def section_seed_like(ours, sizes, device, report, ceiling, flops):
    """Batch 1, eager attention, fp16 weights + fp16 autocast + GradScaler: how the original trained."""
    if device.type != "cuda":
        print("seed-like: fp16 autocast needs CUDA; skipped on CPU")
        return
    inputs = make_inputs(ours, sizes, 1, device)
    samples = {"image": inputs.images, "prompt": inputs.prompts, "caption": inputs.captions}
    from xraygpt.models.regional_compile import compile_decoder_layers, decompile_decoder_layers

    llm = ours.llama_model
    ours.visual_encoder.half()
    llm.half()
    llm.set_attn_implementation("eager")
    decompile_decoder_layers(llm)
    saved = ours.config.compile_llm, ours._llm_compiled, ours._encoder_graph
    ours.config.compile_llm, ours._llm_compiled, ours._encoder_graph = False, False, None
    try:
        scaler = torch.amp.GradScaler("cuda")
        params = [p for p in ours.parameters() if p.requires_grad]
        step = train_step_fn(lambda: ours(samples)["loss"], params, device, torch.float16, scaler)
        print("seed-like B=1", flush=True)
        measure_training("seed-like", step, device, sizes, 1, flops, ceiling, param_bytes(ours), report, "train.seed_like")
    finally:
        llm.set_attn_implementation("sdpa")
        llm.to(torch.bfloat16)
        ours.visual_encoder.to(torch.bfloat16)
        ours.config.compile_llm, ours._llm_compiled, ours._encoder_graph = saved
        compile_decoder_layers(llm)


def section_length_mix(ours, sizes, device, report):
    """Captions drawn like OpenI (short) plus LLM-written reports (long): naive padding vs length grouping."""
    from xraygpt.runners.samplers import ResumableBatchSampler

    rng = random.Random(0)
    lengths = [rng.randint(*sizes.mix_long) if rng.random() < 0.3 else rng.randint(*sizes.mix_short)
               for _ in range(sizes.mix_samples)]
    captions = [caption_of(n) for n in lengths]
    inputs = make_inputs(ours, sizes, sizes.mix_batch, device)
    params = [p for p in ours.parameters() if p.requires_grad]
    saved_len = ours.config.max_txt_len
    ours.config.max_txt_len = max(sizes.mix_long) + 8
    ours.train()
    try:
        for name, grouped in (("naive", False), ("grouped", True)):
            sampler = ResumableBatchSampler(len(captions), sizes.mix_batch, shuffle=True, seed=0,
                                            lengths=lengths if grouped else None)
            batches = list(sampler)
            real_tokens, padded_tokens = 0, 0
            for b in batches:
                real_tokens += sum(lengths[i] for i in b)
                padded_tokens += max(lengths[i] for i in b) * len(b)
            holder = {}
            step = train_step_fn(lambda: ours({"image": inputs.images, "prompt": inputs.prompts,
                                               "caption": holder["captions"]})["loss"], params, device, amp_dtype(device))
            holder["captions"] = [captions[i] for i in batches[0]]
            step()  # warm-up on the first batch
            synchronize(device)
            t0 = time.perf_counter()
            for b in batches:
                holder["captions"] = [captions[i] for i in b]
                step()
            synchronize(device)
            seconds = time.perf_counter() - t0
            sps = len(batches) * sizes.mix_batch / seconds
            report.put(f"mix.{name}.samples_per_s", sps)
            report.put(f"mix.{name}.caption_padding_fraction", 1 - real_tokens / padded_tokens)
            print(f"  length mix {name:8s}: {sps:8.2f} samples/s, caption padding {1 - real_tokens / padded_tokens:.0%}",
                  flush=True)
    finally:
        ours.config.max_txt_len = saved_len
    report.put("mix.mean_caption_tokens", sum(lengths) / len(lengths))


def section_feature_cache(ours, sizes, device, report):
    batch = max(sizes.train_batches)
    inputs = make_inputs(ours, sizes, batch, device)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype(device) or torch.float32,
                                         enabled=amp_dtype(device) is not None):
        features = ours.encode_qformer(inputs.images)
    params = [p for p in ours.parameters() if p.requires_grad]
    ours.train()
    step = train_step_fn(lambda: ours({"image_features": features, "prompt": inputs.prompts,
                                       "caption": inputs.captions})["loss"], params, device, amp_dtype(device))
    timing = time_fn(step, device, reps=sizes.reps, warmup=sizes.warmup)
    sps = batch / (timing.median_ms / 1e3)
    report.put(f"cache.b{batch}.samples_per_s", sps)
    print(f"  feature cache B={batch}: {sps:8.2f} samples/s", flush=True)


def profile_step(step, name, report):
    """Top CUDA kernels of one step, to see where the time goes (written to the log)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60)
    report.extra_text[f"profile_{name}"] = table
    print(table, flush=True)


# -------------------------------------------------------------------------------------------- generation
def section_generation(ours, base, sizes, device, report, copy_gbps):
    from xraygpt.models.regional_compile import compile_decoder_layers, decompile_decoder_layers

    llm = ours.llama_model
    weight_bytes = param_bytes(llm) - param_bytes(llm.get_input_embeddings())
    floor_ms = weight_bytes / (copy_gbps * 1e9) * 1e3
    report.put("gen.llm_weight_bytes_per_token", weight_bytes)
    report.put("gen.floor_ms_per_token", floor_ms)
    report.put("gen.floor_tokens_per_s", 1e3 / floor_ms)
    n = sizes.new_tokens
    exact = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, stop_strings=[])
    ours.eval()
    decompile_decoder_layers(llm)  # the demo / CLI never train, so their LLM blocks are not compiled
    try:
        _generation_runs(ours, base, sizes, device, report, llm, n, exact, floor_ms)
    finally:
        if ours._llm_compiled:  # later training sections measure the product's compiled blocks again
            compile_decoder_layers(llm)


def _generation_runs(ours, base, sizes, device, report, llm, n, exact, floor_ms):
    from xraygpt.models import graph_decoding

    base.language_projection.to(base.dtype)  # inference baseline: everything bf16, as a user loads it
    for batch in sizes.gen_batches:
        inputs = make_inputs(ours, sizes, batch, device, seed=1)
        run = lambda: ours.generate(inputs.images, inputs.prompts, return_ids=True, **exact)  # noqa: E731
        t_warm = time.perf_counter()
        _, ids = run()  # first call pays the capture
        synchronize(device)
        report.put(f"gen.b{batch}.ours.first_call_s", time.perf_counter() - t_warm)
        assert all(len(r) == n for r in ids), [len(r) for r in ids]
        with PeakMemory(device, param_bytes(ours)) as peak:
            total = time_fn(run, device, reps=sizes.gen_reps, warmup=0)
        first = time_fn(lambda: ours.generate(inputs.images, inputs.prompts, **{**exact, "max_new_tokens": 1,
                                                                                  "min_new_tokens": 1}),
                        device, reps=sizes.gen_reps, warmup=1)
        put_generation(report, f"gen.b{batch}.ours", batch, n, total.median_ms, first.median_ms, peak.gib, floor_ms)

        ids_b, mask_b, _ = baseline_batch(ours, inputs, base.config.image_token_index, train=False)
        ids_b, mask_b = ids_b.to(device), mask_b.to(device)
        pixels = inputs.images.to(base.dtype)
        base_run = lambda: base.generate(pixel_values=pixels, input_ids=ids_b, attention_mask=mask_b,  # noqa: E731
                                         max_new_tokens=n, min_new_tokens=n, do_sample=False)
        with PeakMemory(device, param_bytes(base)) as peak:
            total = time_fn(base_run, device, reps=sizes.slow_gen_reps, warmup=0)
        first = time_fn(lambda: base.generate(pixel_values=pixels, input_ids=ids_b, attention_mask=mask_b,
                                              max_new_tokens=1, do_sample=False), device, reps=3, warmup=1)
        put_generation(report, f"gen.b{batch}.baseline", batch, n, total.median_ms, first.median_ms, peak.gib, floor_ms)

    # Where the time to first token goes (batch 1): image encoder + prompt embedding, then prefill + 1 token.
    inputs = make_inputs(ours, sizes, 1, device, seed=1)
    prep = time_fn(lambda: ours.prepare_generation_inputs(inputs.images, inputs.prompts), device, sizes.gen_reps, 2)
    embeds, mask = ours.prepare_generation_inputs(inputs.images, inputs.prompts)
    one = time_fn(lambda: graph_decoding.fast_generate(llm, embeds, mask, max_new_tokens=1), device, sizes.gen_reps, 2)
    report.put("gen.b1.ours.ttft_encode_ms", prep.median_ms)
    report.put("gen.b1.ours.ttft_prefill_ms", one.median_ms)
    print(f"  TTFT split B=1: encode+embed {prep.median_ms:.1f} ms, prefill+first token {one.median_ms:.1f} ms", flush=True)

    # Same greedy tokens with the fast path off (transformers generate on our model) and without CUDA graphs.
    inputs = make_inputs(ours, sizes, 1, device, seed=1)
    _, fast_ids = ours.generate(inputs.images, inputs.prompts, return_ids=True, **exact)
    ours.config.use_fast_generation = False
    try:
        t0 = time.perf_counter()
        _, slow_ids = ours.generate(inputs.images, inputs.prompts, return_ids=True, **exact)
        synchronize(device)
        report.put("gen.b1.ours_fast_off.tokens_per_s", n / (time.perf_counter() - t0))
    finally:
        ours.config.use_fast_generation = True
    report.put("gen.greedy_identical_to_hf_path", agreement(fast_ids[0], slow_ids[0]))
    eager = graph_decoding.FastGenerator(llm, use_cuda_graph=False)
    embeds, mask = ours.prepare_generation_inputs(inputs.images, inputs.prompts)
    eager_ids = eager.generate(embeds, mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0].cpu()
    graph_ids = graph_decoding.fast_generate(llm, embeds, mask, max_new_tokens=n, min_new_tokens=n,
                                              do_sample=False)[0].cpu()
    report.put("gen.graph_identical_to_eager_step", agreement(graph_ids, eager_ids))


def section_peer(ours, base, sizes, device, report):
    """The strong peer: the same transformers baseline with a static cache + torch.compile
    (``cache_implementation="static"``: transformers compiles the forward and replays CUDA graphs)."""
    n = sizes.new_tokens
    base.language_projection.to(base.dtype)
    for batch in (min(sizes.gen_batches), max(sizes.gen_batches)):
        inputs = make_inputs(ours, sizes, batch, device, seed=1)
        ids_b, mask_b, _ = baseline_batch(ours, inputs, base.config.image_token_index, train=False)
        kwargs = dict(pixel_values=inputs.images.to(base.dtype), input_ids=ids_b.to(device), attention_mask=mask_b.to(device),
                      max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static")
        synchronize(device)
        t0 = time.perf_counter()
        base.generate(**kwargs)  # compiles
        synchronize(device)
        report.put(f"gen.b{batch}.peer.first_call_s", time.perf_counter() - t0)
        total = time_fn(lambda: base.generate(**kwargs), device, reps=max(sizes.slow_gen_reps, 2), warmup=0)
        report.put(f"gen.b{batch}.peer.aggregate_tokens_per_s", batch * n / (total.median_ms / 1e3))
        report.put(f"gen.b{batch}.peer.per_seq_tokens_per_s", n / (total.median_ms / 1e3))
        print(f"  gen.b{batch}.peer (static cache + compile): {batch * n / (total.median_ms / 1e3):8.1f} tok/s, "
              f"first call {report.values[f'gen.b{batch}.peer.first_call_s']:.1f} s", flush=True)


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    a, b = a.tolist(), b.tolist()
    if a == b:
        return f"identical ({len(a)} tokens)"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"differ from token {first} of {max(len(a), len(b))}"


def put_generation(report, key, batch, n, total_ms, first_ms, peak_gib, floor_ms):
    decode_ms = (total_ms - first_ms) / max(n - 1, 1)
    report.put(f"{key}.ttft_ms", first_ms)
    report.put(f"{key}.total_s", total_ms / 1e3)
    report.put(f"{key}.per_seq_tokens_per_s", n / (total_ms / 1e3))
    report.put(f"{key}.aggregate_tokens_per_s", batch * n / (total_ms / 1e3))
    report.put(f"{key}.decode_ms_per_step", decode_ms)
    report.put(f"{key}.floor_fraction", floor_ms / decode_ms)
    report.put(f"{key}.peak_gib", peak_gib)
    print(f"  {key}: TTFT {first_ms:7.1f} ms  {n / (total_ms / 1e3):7.1f} tok/s/seq  "
          f"{batch * n / (total_ms / 1e3):8.1f} tok/s  {decode_ms:6.2f} ms/step ({floor_ms / decode_ms:.0%} of floor)  "
          f"peak {peak_gib:.2f} GiB", flush=True)


# ------------------------------------------------------------------------------------------------- main
def free(*models) -> None:
    for model in models:
        model.to("meta") if model is not None else None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes: runs every section in seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--sections", default="train,seed,gen,peer,cache,mix,ablate",
                        help="comma list of: train, seed, gen, peer, cache, mix, ablate (run in this order)")
    parser.add_argument("--budget-s", type=float, default=480, help="skip remaining sections past this wall time")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    device = torch.device(args.device)
    sections = set(args.sections.split(","))
    report = Report(args.out, tiny=args.tiny)
    report.merge_json(args.out / "ddp.json")  # from ddp_scaling.py runs before this one, if any
    if args.tiny:
        torch.set_num_threads(1)  # toy kernels: threads only add overhead
    started = time.perf_counter()
    report.put("env.date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    report.put("env.python", platform.python_version())
    report.put("env.torch", torch.__version__)
    import transformers

    report.put("env.transformers", transformers.__version__)
    report.put("env.device", torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu")
    print(f"devices: {report.values['env.device']}  torch {torch.__version__}  transformers {transformers.__version__}",
          flush=True)

    ceiling = matmul_ceiling(device, sizes.matmul_n, reps=10)
    copy_gbps = copy_ceiling(device, sizes.copy_bytes, reps=10)
    report.put("ceiling.matmul_tflops", ceiling)
    report.put("ceiling.copy_gbps", copy_gbps)
    print(f"ceilings: matmul {ceiling:.1f} TFLOP/s, copy {copy_gbps:.0f} GB/s", flush=True)

    dtype_name = "bf16" if device.type == "cuda" else "fp32"
    t0 = time.perf_counter()
    ours = build_ours(sizes, device, dtype_name)
    report.put("build.ours_s", time.perf_counter() - t0)
    t0 = time.perf_counter()
    base = build_baseline(sizes, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    report.put("build.baseline_s", time.perf_counter() - t0)
    report.put("model.params_total", param_count(ours))
    report.put("model.params_llm", param_count(ours.llama_model))
    print(f"built: ours {report.values['build.ours_s']:.1f} s, baseline {report.values['build.baseline_s']:.1f} s, "
          f"{param_count(ours) / 1e9:.2f} B parameters", flush=True)

    plan = [("train", lambda: report.put("_flops", section_training(ours, base, sizes, device, report, ceiling))),
            ("seed", lambda: section_seed_like(ours, sizes, device, report, ceiling, report.values["_flops"])),
            ("gen", lambda: section_generation(ours, base, sizes, device, report, copy_gbps)),
            ("peer", lambda: section_peer(ours, base, sizes, device, report)),
            ("cache", lambda: section_feature_cache(ours, sizes, device, report)),
            ("mix", lambda: section_length_mix(ours, sizes, device, report)),
            ("ablate", lambda: section_ablations(ours, sizes, device, report, ceiling, report.values["_flops"]))]
    for name, run in plan:
        if name not in sections:
            continue
        if time.perf_counter() - started > args.budget_s:
            report.skipped.append(f"{name} (time budget)")
            continue
        try:
            run()
        except Exception:  # keep the other sections' numbers; the log shows the failure
            traceback.print_exc()
            report.skipped.append(f"{name} (error: {traceback.format_exc(limit=1).splitlines()[-1]})")
        report.write()
    free(base, ours)
    report.put("env.wall_s", time.perf_counter() - started)
    report.write()
    print(report.table(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
