"""Serving benchmark (issue 12): the OpenAI-compatible server, over HTTP, as clients see it.

    python3 benchmarks/serve_benchmark.py --cfg-path eval_configs/xraygpt_eval.yaml --device cuda:0 \
        [--options model.ckpt=... model.llama_model=...] [--out serve_results.json]
    python3 benchmarks/serve_benchmark.py --cfg-path eval_configs/seed_reference_tiny.yaml --device cpu \
        --tokens 20 --clients 4 --single-runs 1          # toy run, to test the script

Sections (targets from the issue, at 300 new tokens each):
  1 client   : time to first token (TTFT) <= 100 ms, >= 130 tokens/s
  32 clients : aggregate >= 2,500 tokens/s, p95 TTFT <= 1 s
The server runs in this process (uvicorn in a thread) on 127.0.0.1; the clients are httpx async streams
(the GPU machine has httpx but not the openai package). ``ignore_eos`` makes every answer exactly
``--tokens`` long. TTFT = request sent -> first streamed chunk with text. Prints as it goes.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE = REPO / "tests" / "fixtures" / "seed_reference" / "images" / "xray_0.png"
QUESTION = "Describe the given chest x-ray image in detail."


def parse_args() -> argparse.Namespace:
    from xraygpt.common.config import add_config_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--device", default=None, help="default: cuda:0 when CUDA is present")
    parser.add_argument("--tokens", type=int, default=300, help="new tokens per answer")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the second section")
    parser.add_argument("--single-runs", type=int, default=3, help="sequential requests in the 1-client section")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    return parser.parse_args()


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_request(client, url: str, body: dict) -> dict:
    """Stream one answer; returns ttft_s, total_s, tokens, decode tokens/s."""
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if first is None and choice["delta"].get("content"):
                    first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft_s": first - start, "total_s": end - start, "tokens": tokens,
            "tokens_per_s": (tokens - 1) / (end - first) if end > first and tokens > 1 else 0.0}


def request_body(image_url: str, tokens: int) -> dict:
    return {
        "model": "xraygpt", "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                   {"type": "text", "text": QUESTION}]}],
    }


async def run_sections(url: str, args: argparse.Namespace, image_url: str) -> dict:
    import httpx

    results: dict = {}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t = time.perf_counter()
        await one_request(client, url, request_body(image_url, 8))
        await asyncio.gather(*(one_request(client, url, request_body(image_url, 8)) for _ in range(args.clients)))
        print(f"warm-up (1 + {args.clients} short requests): {time.perf_counter() - t:.1f} s", flush=True)

        single = []
        for run in range(args.single_runs):
            single.append(await one_request(client, url, request_body(image_url, args.tokens)))
            r = single[-1]
            print(f"1 client, run {run + 1}: TTFT {r['ttft_s'] * 1000:.1f} ms, {r['tokens']} tokens, "
                  f"{r['tokens_per_s']:.1f} tokens/s", flush=True)
        results["single"] = {
            "ttft_ms_median": 1000 * statistics.median(r["ttft_s"] for r in single),
            "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in single),
            "runs": single,
        }

        t = time.perf_counter()
        many = await asyncio.gather(*(one_request(client, url, request_body(image_url, args.tokens))
                                      for _ in range(args.clients)))
        wall = time.perf_counter() - t
        total = sum(r["tokens"] for r in many)
        results["concurrent"] = {
            "clients": args.clients, "wall_s": wall, "tokens": total, "aggregate_tokens_per_s": total / wall,
            "ttft_ms_p50": 1000 * percentile([r["ttft_s"] for r in many], 0.5),
            "ttft_ms_p95": 1000 * percentile([r["ttft_s"] for r in many], 0.95),
            "per_client_tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in many),
        }
        c = results["concurrent"]
        print(f"{args.clients} clients: {total} tokens in {wall:.2f} s = {c['aggregate_tokens_per_s']:.0f} tokens/s "
              f"aggregate; TTFT p50 {c['ttft_ms_p50']:.0f} ms, p95 {c['ttft_ms_p95']:.0f} ms", flush=True)
        results["server_stats"] = (await client.get(f"{url}/health")).json()["stats"]
    return results


def main() -> int:
    args = parse_args()
    import torch

    from xraygpt.common.cli import setup_logging
    from xraygpt.common.config import Config
    from xraygpt.conversation.loading import load_model_and_processor, pick_device
    from xraygpt.serve.app import create_app
    from xraygpt.serve.background import serve_in_thread
    from xraygpt.serve.settings import ServeSettings

    setup_logging()
    import logging

    for noisy in ("xraygpt.serve.access", "httpx"):  # one line per request would bury the numbers
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = pick_device(args.device)
    t = time.perf_counter()
    model, processor = load_model_and_processor(Config(args), device)
    print(f"model loaded on {device} in {time.perf_counter() - t:.1f} s "
          f"(torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'})",
          flush=True)
    settings = ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                             max_queue=4 * args.clients, max_tokens_limit=max(1024, args.tokens))
    server = serve_in_thread(create_app(model, processor, settings))
    image_url = "data:image/png;base64," + base64.b64encode(args.image.read_bytes()).decode()
    t = time.perf_counter()
    try:
        results = asyncio.run(run_sections(server.url, args, image_url))
    finally:
        server.stop()
    s, c = results["single"], results["concurrent"]
    checks = [
        ("1 client TTFT ms", s["ttft_ms_median"], "<=", 100),
        ("1 client tokens/s", s["tokens_per_s_median"], ">=", 130),
        (f"{args.clients} clients aggregate tokens/s", c["aggregate_tokens_per_s"], ">=", 2500),
        (f"{args.clients} clients p95 TTFT ms", c["ttft_ms_p95"], "<=", 1000),
    ]
    print(f"\nbenchmark sections took {time.perf_counter() - t:.1f} s; {args.tokens} new tokens per answer")
    print(f"{'metric':40s} {'measured':>10s}  target   met")
    for name, value, op, target in checks:
        met = value <= target if op == "<=" else value >= target
        print(f"{name:40s} {value:10.1f}  {op}{target:<6}  {'yes' if met else 'NO'}")
    print(f"server: {results['server_stats']}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
