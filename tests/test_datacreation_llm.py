"""LLM mode against a real local OpenAI-compatible HTTP server (stdlib, 127.0.0.1).

The fake server reads a behaviour marker from the report text the client sends
(``case <uid> BEHAVE:<name>``) and answers well, with malformed JSON, 429s, 5xx or slowly.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from xraygpt.data_creation.cli import openi_main

SECRET = "sk-test-secret-value-0123456789"
MARKER = re.compile(r"case (\d+) BEHAVE:(\w+)")


class FakeLLMServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()
        self.log: list = []  # (phase, uid, task, status)
        self.phase = 1
        self.delay = 0.0
        self.auth_headers: set = set()
        # per phase: a killed client's requests may still be sleeping when the resumed run starts
        self.inflight: Counter = Counter()
        self.max_inflight: Counter = Counter()
        self.image_parts = 0
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _completion(content: str) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLMServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict, headers: dict = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_POST(self):
        server = self.server
        phase = server.phase  # at arrival: a killed client's late requests stay in its phase
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith("/chat/completions")
        assert request["response_format"] == {"type": "json_object"}
        server.auth_headers.add(self.headers.get("Authorization"))
        content = request["messages"][-1]["content"]
        if isinstance(content, list):  # --attach-image: text part + data-URL image part
            assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
            content = content[0]["text"]
            with self.server.lock:
                self.server.image_parts += 1
        text = content
        uid, behaviour = MARKER.search(text).groups()
        task = "vqa" if '"question"' in text else "report"
        with server.lock:
            server.attempts[(uid, task)] += 1
            attempt = server.attempts[(uid, task)]
            server.inflight[phase] += 1
            server.max_inflight[phase] = max(server.max_inflight[phase], server.inflight[phase])
        try:
            self._answer(server, uid, behaviour, task, attempt, phase)
        finally:
            with server.lock:
                server.inflight[phase] -= 1

    def _answer(self, server, uid, behaviour, task, attempt, phase):
        status = 200
        if server.delay:
            time.sleep(server.delay)
        if behaviour == "unauthorized":
            status = 401
            self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        elif behaviour == "ratelimit" and attempt <= 2:
            status = 429
            self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"})
        elif behaviour == "servererror" and attempt == 1:
            status = 503
            self._send(503, {"error": {"message": "overloaded"}})
        elif behaviour == "slow" and attempt == 1:
            status = "timeout"
            time.sleep(1.5)  # beyond the client's 0.5 s timeout
            self._send(200, _completion("{}"))
        elif behaviour == "malformedonce" and attempt == 1 or behaviour == "malformed":
            self._send(200, _completion('{"prompt": "Describe the image", "response": '))
        elif behaviour == "masked":
            self._send(200, _completion(json.dumps({"question": "Is XXXX present?", "answer": "Yes",
                                                    "prompt": "Describe XXXX.", "response": "The XXXX is enlarged here."})))
        elif task == "report":
            self._send(200, _completion(json.dumps({"prompt": "Describe this chest X-ray.",
                                                    "response": f"Report of study {uid}: the lungs are clear, heart size normal."})))
        else:
            self._send(200, _completion(json.dumps({"question": f"Is study {uid} normal?", "answer": "Yes."})))
        with server.lock:
            server.log.append((phase, uid, task, status))


@pytest.fixture
def llm_server():
    server = FakeLLMServer()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


def make_openi(root: Path, behaviours: dict, frontals: int = 1) -> Path:
    """A tiny Kaggle-layout OpenI folder whose findings carry the server's behaviour markers."""
    images = root / "images" / "images_normalized"
    images.mkdir(parents=True)
    reports = ["uid,MeSH,Problems,image,indication,comparison,findings,impression"]
    projections = ["uid,filename,projection"]
    for uid, behaviour in behaviours.items():
        reports.append(f'{uid},normal,normal,Xray Chest,"Cough, fever",None.,Findings of case {uid} BEHAVE:{behaviour}. Heart normal.,No acute disease.')
        for k in range(frontals):
            name = f"{uid}_IM-00{k}-1001.dcm.png"
            Image.new("L", (24, 20), color=40 + k).save(images / name)
            projections.append(f"{uid},{name},Frontal")
        Image.new("L", (20, 24), color=90).save(images / f"{uid}_IM-9-2001.dcm.png")
        projections.append(f"{uid},{uid}_IM-9-2001.dcm.png,Lateral")
    (root / "indiana_reports.csv").write_text("\n".join(reports) + "\n")
    (root / "indiana_projections.csv").write_text("\n".join(projections) + "\n")
    return root


def llm_args(source: Path, out: Path, server: FakeLLMServer, *extra: str) -> list:
    return [
        "--root", str(source), "--out", str(out), "--llm", "--model", "fake-model", "--base-url", server.url,
        "--api-key-env", "XRAYGPT_TEST_KEY", "--backoff-base", "0.01", "--backoff-max", "0.05",
        "--request-timeout", "0.5", "--no-progress", "--split", "0.6,0.2,0.2", *extra,
    ]


def read_split_files(out: Path) -> dict:
    names = {"train": "filter_cap.json", "val": "filter_cap_val.json", "test": "filter_cap_test.json"}
    return {split: json.loads((out / name).read_text()) for split, name in names.items()}


def test_llm_mode_retries_rejects_and_counts(tmp_path, llm_server, monkeypatch, capsys, caplog):
    behaviours = {1: "good", 2: "malformedonce", 3: "malformed", 4: "ratelimit", 5: "servererror",
                  6: "slow", 7: "masked", 8: "good", 9: "good", 10: "good"}
    source = make_openi(tmp_path / "openi", behaviours)
    monkeypatch.setenv("XRAYGPT_TEST_KEY", SECRET)
    out = tmp_path / "out"
    assert openi_main(llm_args(source, out, llm_server, "--concurrency", "3", "--max-attempts", "4",
                               "--price-input", "2.5", "--price-output", "10")) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    # Every request reached the server and was counted once, failures included.
    assert manifest["usage"]["requests"] == sum(llm_server.attempts.values())
    assert manifest["usage"]["retries"] == {
        "malformed_answer": 2 * (1 + 3 + 3),  # malformedonce, then 3 retries each for malformed and masked
        "rate_limited": 2 * 2,
        "server_error": 2 * 1,
        "timeout": 2 * 1,
    }
    ok_requests = sum(1 for entry in llm_server.log if entry[3] == 200)
    assert manifest["usage"]["prompt_tokens"] == 100 * ok_requests
    assert manifest["usage"]["estimated_cost_usd"] == pytest.approx((100 * 2.5 + 20 * 10) * ok_requests / 1e6)

    rejected = {(r["source_id"], r["reason"].split(":")[0]) for r in manifest["rejected"] if r["stage"] == "generate"}
    assert rejected == {("openi:3", "report"), ("openi:3", "vqa"), ("openi:7", "report"), ("openi:7", "vqa")}
    reasons = " ".join(r["reason"] for r in manifest["rejected"])
    assert "gave up after 4 attempts" in reasons and "XXXX" in reasons and "invalid JSON" in reasons

    # Each surviving study has exactly its own report and question, in exactly one split.
    entries = [e for split in read_split_files(out).values() for e in split]
    reports = Counter(re.search(r"study (\d+)", e["caption"]).group(1) for e in entries if e["caption"].startswith("Report"))
    questions = Counter(re.search(r"study (\d+)", e["prompt"]).group(1) for e in entries if e["prompt"].startswith("Is study"))
    expected = {str(uid): 1 for uid in behaviours if uid not in (3, 7)}
    assert reports == expected and questions == expected
    for entry in entries:
        uid = re.search(r"study (\d+)", entry["caption"] + entry["prompt"]).group(1)
        assert entry["image"] == f"image/{uid}_IM-000-1001.dcm.png" and (out / entry["image"]).is_file()

    # The key travelled in the Authorization header and nowhere else.
    assert llm_server.auth_headers == {f"Bearer {SECRET}"}
    logged = capsys.readouterr()
    for text in (logged.out, logged.err, caplog.text, *(p.read_text() for p in out.rglob("*.json*"))):
        assert SECRET not in text


def test_missing_key_and_refused_key_stop_with_clear_errors(tmp_path, llm_server, monkeypatch, capsys):
    source = make_openi(tmp_path / "openi", {1: "good"})
    monkeypatch.delenv("XRAYGPT_TEST_KEY", raising=False)
    args = llm_args(source, tmp_path / "out", llm_server)
    no_url = args[: args.index("--base-url")] + args[args.index("--base-url") + 2:]
    assert openi_main(no_url) == 2
    assert "environment variable XRAYGPT_TEST_KEY is not set" in capsys.readouterr().err

    monkeypatch.setenv("XRAYGPT_TEST_KEY", "wrong-key")
    refused = make_openi(tmp_path / "refused", {1: "good", 2: "unauthorized", 3: "good"})
    out = tmp_path / "out2"
    assert openi_main(llm_args(refused, out, llm_server, "--concurrency", "1", "--tasks", "report")) == 2
    err = capsys.readouterr().err
    assert "refused the request (HTTP 401)" in err and "rerun the same command to resume" in err
    assert "wrong-key" not in err
    # Work finished before the refusal is on disk, ready for the rerun.
    cached = [json.loads(line)["source_id"] for line in (out / "cache" / "generated.jsonl").read_text().splitlines()]
    assert cached == ["openi:1"]


def test_resume_after_sigkill_loses_nothing_and_repeats_nothing(tmp_path, llm_server, monkeypatch):
    uids = list(range(1, 25))
    source = make_openi(tmp_path / "openi", {uid: "good" for uid in uids})
    out = tmp_path / "out"
    llm_server.delay = 0.15
    args = llm_args(source, out, llm_server, "--tasks", "report", "--concurrency", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XRAYGPT_TEST_KEY": SECRET}
    process = subprocess.Popen(
        [sys.executable, "Data_Creation_Scripts/create_openi.py", *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    cache = out / "cache" / "generated.jsonl"
    deadline = time.monotonic() + 300  # a loaded CI machine may take long to import torch
    while time.monotonic() < deadline and (not cache.exists() or cache.read_bytes().count(b"\n") < 6):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    done_before = {json.loads(line)["source_id"] for line in cache.read_text().splitlines()}
    assert 6 <= len(done_before) < len(uids), "the kill should land mid-run"
    assert not (out / "filter_cap.json").exists(), "the final JSON is only written at the end"

    llm_server.phase, llm_server.delay = 2, 0.0
    monkeypatch.setenv("XRAYGPT_TEST_KEY", SECRET)
    assert openi_main(args) == 0

    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(uids)  # no duplicate, no loss
    asked_again = {f"openi:{uid}" for phase, uid, _, _ in llm_server.log if phase == 2}
    assert not asked_again & done_before  # finished work was not paid for twice
    assert asked_again | done_before == {f"openi:{uid}" for uid in uids}
    assert llm_server.max_inflight[1] == 2  # --concurrency 2: parallel, and bounded
    assert llm_server.max_inflight[2] <= 2
    entries = [e for split in read_split_files(out).values() for e in split]
    assert sorted(int(re.search(r"study (\d+)", e["caption"]).group(1)) for e in entries) == uids


def test_split_has_no_uid_in_two_splits(tmp_path, llm_server, monkeypatch):
    uids = list(range(1, 13))
    source = make_openi(tmp_path / "openi", {uid: "good" for uid in uids}, frontals=2)
    monkeypatch.setenv("XRAYGPT_TEST_KEY", SECRET)
    out = tmp_path / "out"
    assert openi_main(llm_args(source, out, llm_server, "--all-images", "--concurrency", "4", "--attach-image")) == 0
    assert llm_server.image_parts == 2 * len(uids)  # report + vqa request per study, each with its image
    split_of_uid = {}
    for split, entries in read_split_files(out).items():
        assert entries, f"{split} is empty"
        for entry in entries:
            uid = entry["image"].split("/")[1].split("_")[0]
            assert split_of_uid.setdefault(uid, split) == split, f"uid {uid} is in two splits"
    assert sorted(map(int, split_of_uid)) == uids
    # Both frontal images of a study are used, each with the study's text.
    train = read_split_files(out)["train"]
    assert len({e["image"] for e in train}) == 2 * len({e["image"].split("_")[0] for e in train})
    manifest = json.loads((out / "manifest.json").read_text())
    groups = [set(manifest["splits"][s]["groups"]) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert [len(g) for g in groups] == [8, 2, 2]


def test_prompt_carries_the_source_text_and_the_task_schema(tmp_path):
    from xraygpt.data_creation.llm import build_messages
    from xraygpt.data_creation.records import Job, SourceItem

    image = tmp_path / "ROCO_1.png"
    Image.new("L", (8, 8)).save(image)
    item = SourceItem("roco", "ROCO_1", "roco:PMC1", [image], {"caption": "Axial CT shows a mass.", "keywords": "ct, mass"})
    system, user = build_messages(Job(item, "vqa", "llm-vqa-v1", image=image), attach_image=False)
    assert "never copy 'XXXX'" in system["content"]
    assert "caption: Axial CT shows a mass." in user["content"] and "keywords: ct, mass" in user["content"]
    assert '{"question": "<question>", "answer": "<answer>"}' in user["content"]
    _, with_image = build_messages(Job(item, "report", "llm-report-v1", image=image), attach_image=True)
    text, picture = with_image["content"]
    assert '"response"' in text["text"] and picture["image_url"]["url"].startswith("data:image/png;base64,")
