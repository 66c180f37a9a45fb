"""``python -m xraygpt.serve`` as users start it: the exposure rule, and one real start with a key from the environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.serve_support import CFG, data_url, free_port


def _env(repo_root, **extra):
    env = {k: v for k, v in os.environ.items() if k != "XRAYGPT_API_KEY"}
    env.update(PYTHONPATH=str(repo_root), **extra)
    return env


def _run_main(argv, monkeypatch, capsys):
    """The entry point as ``xraygpt-serve`` runs it (run_cli around main), in this process."""
    from xraygpt.common.cli import run_cli
    from xraygpt.serve.cli import main

    monkeypatch.delenv("XRAYGPT_API_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(argv))
    return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_public_host_without_key_is_refused(host, monkeypatch, capsys):
    code, lines = _run_main(["--cfg-path", CFG, "--host", host], monkeypatch, capsys)
    assert code == 2
    assert lines == [f"error: refusing to serve on {host} without an API key: set XRAYGPT_API_KEY (or --api-key), "
                     "or pass --no-auth-i-understand to serve unauthenticated"]


def test_loopback_rule():
    from xraygpt.serve.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")


@pytest.mark.parametrize("flag, value, message", [
    ("--max-batch-size", "0", "error: --max-batch-size must be >= 1, got 0"),
    ("--max-wait-ms", "-1", "error: --max-wait-ms must be >= 0, got -1.0"),
    ("--allow-local-root", "/no/such/folder", "error: --allow-local-root /no/such/folder is not a folder"),
])
def test_bad_flag_value_is_one_line(flag, value, message, monkeypatch, capsys):
    code, lines = _run_main(["--cfg-path", CFG, flag, value], monkeypatch, capsys)
    assert code == 2 and lines == [message]


def test_serves_with_key_from_environment(repo_root, seed_reference_dir):
    port, key = free_port(), "env-secret-key-42"
    process = subprocess.Popen(
        [sys.executable, "-m", "xraygpt.serve", "--cfg-path", CFG, "--device", "cpu", "--port", str(port)],
        cwd=repo_root, env=_env(repo_root, XRAYGPT_API_KEY=key), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        image = sorted((seed_reference_dir / "images").glob("*.png"))[0]
        reply = client.chat.completions.create(model="xraygpt", max_tokens=5, temperature=0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                         {"type": "text", "text": "Findings?"}]}])
        assert reply.choices[0].message.content and reply.usage.completion_tokens <= 5
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert key not in output
    records = [json.loads(line.split("xraygpt.serve.access: ", 1)[1]) for line in output.splitlines()
               if "xraygpt.serve.access: " in line]
    answered = [r for r in records if r["path"] == "/v1/chat/completions" and r["status"] == 200]
    assert len(answered) == 1
    assert set(answered[0]) >= {"request_id", "latency_ms", "prompt_tokens", "completion_tokens", "status"}
    assert any(r["path"] == "/v1/models" and r["status"] == 401 for r in records)
