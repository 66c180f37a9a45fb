"""Soak test of the demo (a benchmark, not CI): many requests from parallel loopback clients, good and bad inputs.

    python benchmarks/soak_demo.py                      # 1,000 requests, 16 clients, tiny seed-reference model, CPU
    python benchmarks/soak_demo.py --requests 200 --clients 4 --time-limit 120

Starts ``python -m xraygpt.demo`` on 127.0.0.1 (a free port) as a subprocess, then 16 ``gradio_client``
sessions send uploads (good PNGs; junk, empty, 1x1, decompression-bomb, truncated, oversized and disguised
files), questions (with and without an image, empty), streamed answers, resets and path-traversal file
requests, chosen at random (seeded).  It stops by itself after ``--requests`` requests or ``--time-limit``
seconds, whichever comes first, and reports: requests by kind and outcome, malformed responses (any reply
that is not the handler's shape, or that carries a traceback), whether the server is still up, and its RSS
at the start (after one warm-up turn) and at the end.  Exit code 1 when anything was malformed or the
server died.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, by design
GOOD_STATUS = ("loaded. Ask a question", "Thinking…", "Done.", "**Note:**", "Chat cleared.")


# ------------------------------------------------------------------ inputs
def make_inputs(folder: Path, max_file_size: int) -> Tuple[List[Path], List[Path]]:
    """Good images (the seed-reference PNGs) and one file of each bad kind."""
    from PIL import Image

    good = sorted((REPO / "tests" / "fixtures" / "seed_reference" / "images").glob("*.png"))
    if not good:
        raise SystemExit("tests/fixtures/seed_reference/images holds no PNG: the soak test needs the tiny fixtures")
    bad = {
        "junk.png": b"this is not an image at all",
        "empty.png": b"",
        "disguised.jpg": b"#!/bin/sh\necho hello\n",
        "notes.txt": b"plain text",
        "truncated.png": good[0].read_bytes()[: len(good[0].read_bytes()) // 3],
        "oversized.png": os.urandom(max_file_size + 1024),
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    Image.new("L", (1, 1)).save(folder / "one_pixel.png")
    bomb = folder / "bomb.png"
    Image.new("L", (16, 16)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = struct.pack(">II", 40000, 40000)  # IHDR width/height claim 1.6 gigapixels
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb.write_bytes(bytes(data))
    return good, sorted(p for p in folder.iterdir() if p.name not in {g.name for g in good})


# ------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http_get(url: str, timeout: float = 30) -> Tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_server(cfg: str, port: int, max_file_size: str, concurrency: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("XRAYGPT_DEMO_AUTH", None)
    cmd = [sys.executable, "-m", "xraygpt.demo", "--cfg-path", cfg, "--device", "cpu", "--host", HOST,
           "--port", str(port), "--concurrency", str(concurrency), "--queue-size", "256",
           "--max-file-size", max_file_size]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the demo exited with code {proc.returncode} before serving (see its log)")
        try:
            if http_get(url, timeout=5)[0] == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise SystemExit(f"the demo did not answer on {url} within {timeout:.0f} s")


# ------------------------------------------------------------------ checks
def _statuses(result: Any) -> List[str]:
    return [part for part in (result if isinstance(result, tuple) else (result,)) if isinstance(part, str)]


def check_reply(kind: str, result: Any, expect_ok: Optional[bool]) -> Optional[str]:
    """Why ``result`` is malformed for ``kind`` (None when it is well-formed)."""
    shapes = {"upload": 3, "ask": 3, "answer": 2, "reset": 5}
    if not isinstance(result, tuple) or len(result) != shapes[kind]:
        return f"{kind}: reply of shape {type(result).__name__}/{len(result) if isinstance(result, tuple) else '-'}"
    status = result[-1]
    if not isinstance(status, str) or not status:
        return f"{kind}: no status message"
    if "Traceback" in json.dumps(result, default=str):
        return f"{kind}: a traceback reached the client"
    is_error = status.startswith("**Error:**")
    if not is_error and not any(mark in status for mark in GOOD_STATUS):
        return f"{kind}: unexpected status {status[:80]!r}"
    if expect_ok is not None and expect_ok == is_error:
        return f"{kind}: expected {'success' if expect_ok else 'an error message'}, got {status[:80]!r}"
    return None


class Soak:
    def __init__(self, url: str, good: List[Path], bad: List[Path], requests: int, deadline: float, seed: int):
        self.url, self.good, self.bad = url, good, bad
        self.budget, self.deadline = requests, deadline
        self.seed = seed
        self.lock = threading.Lock()
        self.sent = 0
        self.outcomes: Counter = Counter()
        self.malformed: List[str] = []
        self.latencies: Dict[str, List[float]] = {}

    def _take(self, n: int = 1) -> bool:
        with self.lock:
            if self.sent + n > self.budget or time.time() > self.deadline:
                return False
            self.sent += n
            return True

    def _record(self, kind: str, outcome: str, seconds: float, problem: Optional[str] = None) -> None:
        with self.lock:
            self.outcomes[f"{kind}:{outcome}"] += 1
            self.latencies.setdefault(kind, []).append(seconds)
            if problem:
                self.malformed.append(problem)

    def _call(self, client, kind: str, expect_ok: Optional[bool], *args) -> Any:
        start = time.perf_counter()
        try:
            result = client.predict(*args, api_name=f"/{kind}")
        except Exception as exc:  # gradio's own refusals (e.g. an upload over --max-file-size) arrive as errors
            message = " ".join(str(exc).split())[:160]
            well_formed = "Traceback" not in message and len(message) < 400
            self._record(kind, "refused-by-gradio", time.perf_counter() - start,
                         None if well_formed else f"{kind}: {message}")
            return None
        problem = check_reply(kind, result, expect_ok)
        status = result[-1] if isinstance(result, tuple) else ""
        self._record(kind, "error-message" if str(status).startswith("**Error:**") else "ok",
                     time.perf_counter() - start, problem)
        return result

    def worker(self, index: int) -> None:
        from gradio_client import Client, handle_file

        rng = random.Random(self.seed * 1000 + index)
        client = Client(self.url, verbose=False)
        history: list = []
        has_image: Optional[bool] = False
        """Whether the session holds an image; None after a client-side failure (then no expectation)."""
        while True:
            action = rng.choices(["turn", "bad_upload", "ask_no_image", "empty_question", "reset", "traversal"],
                                 weights=[3, 4, 1, 1, 1, 1])[0]
            if action == "turn":
                if not self._take(3):
                    return
                result = self._call(client, "upload", True, handle_file(str(rng.choice(self.good))))
                # A client-side failure (e.g. the reply's preview download cut) leaves the session state unknown.
                has_image, history = (None if result is None else "loaded" in str(result[-1])), []
                asked = self._call(client, "ask", has_image, rng.choice(["Describe the image.", "Any effusion?"]),
                                   history)
                if asked is not None and asked[-1] == "Thinking…":
                    answered = self._call(client, "answer", None, asked[1], 1, rng.choice([0.0, 0.7]), 16)
                    history = answered[0] if answered is not None else []
            elif action == "bad_upload":
                if not self._take():
                    return
                refused = self._call(client, "upload", False, handle_file(str(rng.choice(self.bad)))) is None
                has_image, history = (None if refused else False), []
            elif action == "ask_no_image":
                if not self._take(2):
                    return
                self._call(client, "reset", True)
                self._call(client, "ask", False, "Is this normal?", [])
                has_image, history = False, []
            elif action == "empty_question":
                if not self._take():
                    return
                self._call(client, "ask", False, "   ", history)  # refused with or without an image
            elif action == "reset":
                if not self._take():
                    return
                self._call(client, "reset", True)
                has_image, history = False, []
            else:
                if not self._take():
                    return
                start = time.perf_counter()
                attack = rng.choice(["/etc/passwd", "../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd"])
                code, body = http_get(f"{self.url}gradio_api/file={attack}")
                problem = None if code in (403, 404) and b"root:" not in body else f"traversal {attack}: HTTP {code}"
                self._record("traversal", f"http-{code}", time.perf_counter() - start, problem)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg-path", default=str(REPO / "eval_configs" / "seed_reference_tiny.yaml"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds of soak (after start-up)")
    parser.add_argument("--concurrency", type=int, default=2, help="the demo's --concurrency")
    parser.add_argument("--max-file-size", default="1mb")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    from xraygpt.demo import parse_size

    with tempfile.TemporaryDirectory(prefix="xraygpt-soak-") as tmp:
        good, bad = make_inputs(Path(tmp), parse_size(args.max_file_size))
        port = free_port()
        url = f"http://{HOST}:{port}/"
        log_path = Path(tmp) / "demo.log"
        proc = start_server(args.cfg_path, port, args.max_file_size, args.concurrency, log_path)
        try:
            started = time.time()
            wait_until_up(proc, url, timeout=300)
            up_s = time.time() - started
            warm = Soak(url, good, bad, 3, time.time() + 120, args.seed)
            warm_client_turn(warm)
            rss_start = rss_mib(proc.pid)
            soak = Soak(url, good, bad, args.requests, time.time() + args.time_limit, args.seed)
            t0 = time.time()
            rss_trace: List[Tuple[int, float]] = []
            done = threading.Event()

            def sample_rss() -> None:  # every 10 s: (requests so far, RSS) shows whether memory creeps
                while not done.wait(10) and proc.poll() is None:
                    rss_trace.append((soak.sent, round(rss_mib(proc.pid), 1)))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            with ThreadPoolExecutor(args.clients, thread_name_prefix="client") as pool:
                futures = [pool.submit(soak.worker, i) for i in range(args.clients)]
                crashed = [repr(f.exception()) for f in futures if f.exception() is not None]
            done.set()
            seconds = time.time() - t0
            alive = proc.poll() is None and http_get(url)[0] == 200
            rss_end = rss_mib(proc.pid) if proc.poll() is None else float("nan")
            server_log = log_path.read_text(errors="replace")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = {
        "requests": sum(soak.outcomes.values()), "budget": args.requests, "clients": args.clients,
        "seconds": round(seconds, 1), "server_start_s": round(up_s, 1), "server_alive_at_end": alive,
        "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_end, 1), "rss_mib_trace": rss_trace,
        "outcomes": dict(sorted(soak.outcomes.items())), "malformed": len(soak.malformed),
        "malformed_examples": soak.malformed[:10], "client_crashes": crashed,
        "median_latency_s": {k: round(sorted(v)[len(v) // 2], 3) for k, v in sorted(soak.latencies.items())},
        "server_log_tracebacks": server_log.count("Traceback"),
        "server_log_exceptions": traceback_tails(server_log),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if alive and not soak.malformed and not crashed else 1


def traceback_tails(log: str) -> Dict[str, int]:
    """The exception line ending each traceback in the server log, with counts (server-side only, never sent)."""
    tails: Counter = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            rest = [x for x in lines[i + 1:] if x and not x.startswith((" ", "Traceback"))]
            if rest:
                tails[rest[0][:160]] += 1
    return dict(tails)


def warm_client_turn(soak: "Soak") -> None:
    """One good upload + question + answer, so the start RSS includes the loaded model and a first generation."""
    from gradio_client import Client, handle_file

    client = Client(soak.url, verbose=False)
    client.predict(handle_file(str(soak.good[0])), api_name="/upload")
    asked = client.predict("Describe the image.", [], api_name="/ask")
    client.predict(asked[1], 1, 0.0, 16, api_name="/answer")


if __name__ == "__main__":
    sys.exit(main())
