"""The OpenAI-compatible server on the tiny seed-reference model, over real HTTP with the openai client."""
from __future__ import annotations

import base64
import concurrent.futures
import time

import httpx
import openai
import pytest

from tests.serve_support import API_KEY, data_url, load_tiny, reference_answer, start_server
from xraygpt.serve.settings import ServeSettings

MAX_TOKENS = 40


@pytest.fixture(scope="module")
def server(repo_root, tmp_path_factory):
    model, processor = load_tiny(repo_root)
    local = tmp_path_factory.mktemp("local_images")
    settings = ServeSettings(api_key=API_KEY, max_batch_size=16, max_wait_ms=300, max_queue=64,
                             max_body_bytes=1024 * 1024, allow_local_root=local.resolve())
    running = start_server(model, processor, settings)
    running.local_root = local
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def images(seed_reference_dir):
    return sorted((seed_reference_dir / "images").glob("*.png"))


def _ask(image_url: str, question: str):
    return [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": image_url}}]}]


def _stats(server) -> dict:
    return httpx.get(f"{server.url}/health").json()


def _wait_for_cancel(server, cancelled_before: int) -> dict:
    """/health once no row runs and one more request was cancelled (or after 30 s, for the asserts to report)."""
    deadline = time.monotonic() + 30
    while True:
        health = _stats(server)
        done = health["running"] == 0 and health["stats"].get("cancelled", 0) > cancelled_before
        if done or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["xraygpt"]
    health = _stats(server)
    assert health["status"] == "ok" and health["running"] == 0


def test_answer_equals_model_generate(server, client, images):
    question = "What are the findings?"
    expected = reference_answer(server.model, server.processor, images[0], question, MAX_TOKENS)
    reply = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[0]), question),
                                           max_tokens=MAX_TOKENS, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.completion_tokens == MAX_TOKENS or reply.choices[0].finish_reason == "stop"
    assert usage.image_tokens == 8 and usage.prompt_tokens > 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_equals_model_generate(server, client, images):
    question = "Is there a pleural effusion?"
    expected = reference_answer(server.model, server.processor, images[1], question, MAX_TOKENS)
    stream = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[1]), question),
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.image_tokens == 8


def test_stream_ends_with_done(server, images):
    body = {"model": "xraygpt", "messages": _ask(data_url(images[0]), "Findings?"), "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_multi_turn_history(server, client, images):
    from xraygpt.conversation.templates import IMAGE_TAG
    from xraygpt.common.registry import registry
    import torch

    from xraygpt.datasets.image_io import load_medical_image

    messages = _ask(data_url(images[2]), "Describe the image.") + [
        {"role": "assistant", "content": "The lungs are clear."},
        {"role": "user", "content": "Any effusion?"},
    ]
    tpl = registry.get_conversation_template("default")
    prompt = tpl.render([("Patient", f"{IMAGE_TAG} Describe the image."), ("Doctor", "The lungs are clear."),
                         ("Patient", "Any effusion?"), ("Doctor", None)])
    pixels = server.processor(load_medical_image(images[2])).unsqueeze(0)
    with torch.inference_mode():
        expected = server.model.generate(pixels, [prompt], apply_template=False, max_new_tokens=20)[0]
    reply = client.chat.completions.create(model="xraygpt", messages=messages, max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == expected


def test_sixteen_concurrent_requests_are_batched(server, client, images):
    questions = [f"Question number {i}: what do you see?" for i in range(16)]
    cases = [(images[i % len(images)], q) for i, q in enumerate(questions)]
    expected = [reference_answer(server.model, server.processor, path, q, MAX_TOKENS) for path, q in cases]
    before = _stats(server)["stats"]

    def ask(case):
        path, question = case
        reply = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(path), question),
                                               max_tokens=MAX_TOKENS, temperature=0)
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, cases))
    after = _stats(server)["stats"]
    prefills = after["prefill_batches"] - before.get("prefill_batches", 0)
    print(f"16 requests: {prefills} batched prefill calls, "
          f"{after['decode_steps'] - before.get('decode_steps', 0)} decode steps, max rows in a step {after['max_rows']}")
    assert answers == expected
    assert type(server.app.state.batcher.batch).__name__ == "SlotDecodeBatch"  # the static-cache engine answered
    assert after["admitted"] - before.get("admitted", 0) == 16
    assert prefills < 16
    assert after["max_rows"] > 1


def test_sampling_with_seed_is_reproducible(client, images):
    kwargs = dict(model="xraygpt", messages=_ask(data_url(images[0]), "Findings?"), max_tokens=15,
                  temperature=0.9, top_p=0.9, seed=7)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    again = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == again


def test_disconnect_mid_stream_frees_the_slot(server, client, images):
    before = _stats(server)["stats"].get("cancelled", 0)
    decoded_before = _stats(server)["stats"].get("rows_decoded", 0)
    stream = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[0]), "Describe."),
                                            max_tokens=1000, temperature=0.8, seed=1, stream=True,
                                            extra_body={"stop": ["never-appears-1"], "ignore_eos": True})
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    health = _wait_for_cancel(server, before)
    assert health["running"] == 0
    assert health["stats"]["cancelled"] == before + 1
    assert health["stats"]["rows_decoded"] - decoded_before < 999  # stopped early, not run to max_tokens


def _error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return info.value.status_code, body["error"]["message"]


@pytest.mark.parametrize("content, status, message", [
    ("What do you see?", 400, "no image"),
    ([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not*base64"}}],
     400, "not valid base64"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}],
     400, "the image cannot be read"),
    ([{"type": "image_url", "image_url": {"url": "https://example.org/xray.png"}}], 400, "remote image URLs are not fetched"),
    ([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}], 400, "outside the allowed folder"),
])
def test_bad_inputs(client, content, status, message):
    got = _error(lambda: client.chat.completions.create(model="xraygpt", messages=[{"role": "user", "content": content}]))
    assert got[0] == status and message in got[1], got


def test_two_images_are_refused(client, images):
    url = data_url(images[0])
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "image_url", "image_url": {"url": url}}]
    status, message = _error(lambda: client.chat.completions.create(
        model="xraygpt", messages=[{"role": "user", "content": content}]))
    assert status == 400 and "1 image per conversation" in message and "has 2" in message


def test_local_path_under_the_allowed_root(server, client, images):
    target = server.local_root / "scan.png"
    target.write_bytes(images[0].read_bytes())
    expected = reference_answer(server.model, server.processor, images[0], "Findings?", 10)
    reply = client.chat.completions.create(model="xraygpt", messages=_ask("scan.png", "Findings?"), max_tokens=10,
                                           temperature=0)
    assert reply.choices[0].message.content == expected


def test_oversized_body(client):
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (1024 * 1024)).decode()
    status, message = _error(lambda: client.chat.completions.create(model="xraygpt", messages=_ask(big, "hi")))
    assert status == 413 and "larger than 1048576 bytes" in message


def test_unknown_model(client, images):
    status, message = _error(lambda: client.chat.completions.create(
        model="gpt-4o", messages=_ask(data_url(images[0]), "hi")))
    assert status == 404 and "'gpt-4o' does not exist" in message


@pytest.mark.parametrize("key", ["wrong-key", None])
def test_wrong_or_missing_key(server, images, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=30,
                          json={"model": "xraygpt", "messages": _ask(data_url(images[0]), "hi")})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401


@pytest.mark.parametrize("extra, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "array"}}}},
     "this server writes one JSON schema, the xraygpt chest X-ray report v1"),
    ({"response_format": {"type": "json_object"}, "stream": True}, "cannot be streamed"),
    ({"n": 2}, "n=2 is not supported"),
    ({"max_tokens": 5000}, "above this server's limit of 1024"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools is not supported"),
])
def test_unsupported_parameters(client, images, extra, message):
    status, got = _error(lambda: client.chat.completions.create(
        model="xraygpt", messages=_ask(data_url(images[0]), "hi"), **extra))
    assert status == 400 and message in got, got


def test_json_schema_response_is_the_structured_report_of_the_answer(server, client, images):
    import json

    from xraygpt.structured import extract_report, report_schema, schema_errors

    messages = _ask(data_url(images[1]), "What are the key findings in this chest x-ray?")
    plain = client.chat.completions.create(model="xraygpt", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    for response_format in ({"type": "json_schema", "json_schema": {"name": "report", "schema": report_schema()}},
                            {"type": "json_object"}):
        reply = client.chat.completions.create(model="xraygpt", messages=messages, max_tokens=MAX_TOKENS,
                                               temperature=0, response_format=response_format)
        report = json.loads(reply.choices[0].message.content)
        assert schema_errors(report) == []
        assert report["findings"] == extract_report(plain.choices[0].message.content, {})["findings"]
        assert report["generator"]["mode"] == "extract" and report["generator"]["settings"]["max_new_tokens"] == MAX_TOKENS


def test_constrained_mode_decodes_under_the_schema_as_the_cli_does(server, client, images):
    """The random tiny model under the grammar: the API's row and ``decode_constrained`` write the same JSON
    prefix, cut by max_tokens, so both refuse it the same way (the API with a 400 that says to raise max_tokens)."""
    import torch

    from xraygpt.common.registry import registry
    from xraygpt.conversation.templates import IMAGE_TAG
    from xraygpt.datasets.image_io import load_medical_image
    from xraygpt.structured import StructuredReportError
    from xraygpt.structured.constrained import decode_constrained

    question, limit = "Report the findings of this chest x-ray as JSON.", 16
    tpl = registry.get_conversation_template("default")
    prompt = tpl.render([(tpl.roles[0], f"{IMAGE_TAG} {question}"), (tpl.roles[1], None)])
    pixels = server.processor(load_medical_image(images[0])).unsqueeze(0)
    with pytest.raises(StructuredReportError) as cli_error, torch.inference_mode():
        decode_constrained(server.model, pixels, [prompt], apply_template=False, max_new_tokens=limit, do_sample=False)
    status, message = _error(lambda: client.chat.completions.create(
        model="xraygpt", messages=_ask(data_url(images[0]), question), max_tokens=limit, temperature=0,
        response_format={"type": "json_schema", "mode": "constrained"}))
    cut = str(cli_error.value).split("ended before the JSON closed ")[1].split(";")[0]
    assert status == 400 and f"the constrained answer ended before the JSON closed {cut}; raise max_tokens (was 16)" \
        in message, message
    assert "\n" not in message


def test_malformed_json_and_unknown_route(server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, content=b"{not json")
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("invalid request")
    response = httpx.get(f"{server.url}/v1/nothing-here", headers=headers)
    assert response.status_code == 404 and "error" in response.json()


def test_full_queue_gets_429_with_retry_after(server, client, images):
    batcher = server.app.state.batcher
    batcher.max_queue = 0
    try:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[0]), "hi"))
    finally:
        batcher.max_queue = 64
    assert info.value.response.headers["retry-after"] == "1"
    assert "server is busy" in info.value.response.json()["error"]["message"]


def test_ignore_eos_decodes_exactly_max_tokens(client, images):
    reply = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[0]), "Findings?"),
                                           max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 60 and reply.choices[0].finish_reason == "length"


def test_late_arrival_joins_a_running_batch(server, client, images):
    """A request that arrives while another decodes joins at the next step and is answered first."""
    import threading

    expected = reference_answer(server.model, server.processor, images[2], "Any effusion?", 12)
    first_chunk, long_done = threading.Event(), threading.Event()
    before = _stats(server)["stats"]

    def long_stream():
        stream = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[0]), "Describe."),
                                                max_tokens=1000, temperature=0, stream=True,
                                                extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:  # decoding has started
                first_chunk.set()
        long_done.set()

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert first_chunk.wait(60)
    reply = client.chat.completions.create(model="xraygpt", messages=_ask(data_url(images[2]), "Any effusion?"),
                                           max_tokens=12, temperature=0)
    answered_first = not long_done.is_set()
    worker.join(120)
    after = _stats(server)["stats"]
    assert reply.choices[0].message.content == expected
    assert answered_first
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("prefill_batches", "rows_decoded", "decode_steps")}
    assert delta["prefill_batches"] == 2
    assert delta["rows_decoded"] > delta["decode_steps"]  # some steps decoded both rows


def test_chunked_oversized_body(server):
    """Without Content-Length the cap is enforced while the body arrives."""
    def body():
        for _ in range(40):
            yield b"x" * 32768

    response = httpx.post(f"{server.url}/v1/chat/completions", content=body(), timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_dropped_non_streaming_request_is_cancelled(server, images):
    before = _stats(server)["stats"].get("cancelled", 0)
    decoded_before = _stats(server)["stats"].get("rows_decoded", 0)
    body = {"model": "xraygpt", "messages": _ask(data_url(images[1]), "Describe."), "max_tokens": 1000,
            "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5),
                   headers={"Authorization": f"Bearer {API_KEY}"})
    health = _wait_for_cancel(server, before)
    assert health["running"] == 0 and health["stats"]["cancelled"] == before + 1
    assert health["stats"]["rows_decoded"] - decoded_before < 999  # stopped early, not run to max_tokens
