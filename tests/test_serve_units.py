"""Pieces of the server without HTTP: streamed text vs final answer, the queue cap, image URLs, message mapping."""
from __future__ import annotations

import base64

import pytest

from xraygpt.common.registry import registry
from xraygpt.serve.answer_text import AnswerText
from xraygpt.serve.errors import APIError
from xraygpt.serve.images import load_image_url
from xraygpt.serve.messages import build_prompt
from xraygpt.serve.protocol import ChatMessage


class _Chars:
    """A character-level tokenizer: id = code point (enough to drive the streaming rules)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, i):
        return chr(i)


def _stream(text, stops):
    answer = AnswerText(_Chars(), stops)
    pieces = [answer.add(ord(c)) for c in text]
    return pieces, answer


def test_incremental_text_adds_up_to_the_full_decode(seed_reference_dir):
    """Streaming decodes a few tokens per step; the pieces still add up to decoding the whole answer at once,
    for random token sequences of the real (byte-fallback) LLaMA tokenizer."""
    import random

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(seed_reference_dir / "tokenizer"))
    byte_ids = {i for i in range(tokenizer.vocab_size) if tokenizer.convert_ids_to_tokens(i).startswith("<0x")}
    special = set(tokenizer.all_special_ids)
    checked = 0
    for trial in range(200):
        rng = random.Random(trial)
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 80))]
        # A skipped special token between two byte tokens re-decodes the earlier byte (garbage, not text).
        if any(a in byte_ids and b in special and c in byte_ids for a, b, c in zip(ids, ids[1:], ids[2:])):
            continue
        answer = AnswerText(tokenizer, ["###"])
        streamed = "".join(answer.add(i) for i in ids) + answer.flush()
        expected = tokenizer.decode(ids, skip_special_tokens=True).split("###")[0].strip()
        assert streamed == answer.final() == expected, f"trial {trial}"
        checked += 1
    assert checked > 150


def test_stream_holds_back_possible_stop_and_whitespace():
    pieces, answer = _stream("  Clear lungs. #", ["###"])
    assert "".join(pieces) == "Clear lungs."  # the ' #' might still become ' ###'
    assert answer.flush() == " #" and answer.final() == "Clear lungs. #"
    pieces, answer = _stream("No effusion. ###Patient", ["###"])
    assert "".join(pieces) == "No effusion." and answer.stopped and answer.final() == "No effusion."
    assert answer.flush() == ""


def test_queue_cap():
    from xraygpt.serve.batcher import ContinuousBatcher, GenerationRequest, QueueFullError

    import torch

    class _Model:  # the queue never reaches the model: the batcher is not started
        tokenizer, llama_model = _Chars(), torch.nn.Identity()

    batcher = ContinuousBatcher(_Model(), max_batch_size=2, max_wait_ms=5, max_queue=2)  # not started
    for _ in range(2):
        batcher.submit(GenerationRequest(prompt="<ImageHere>", pixels=[], max_new_tokens=1))
    with pytest.raises(QueueFullError, match=r"2 requests are already waiting \(--max-queue 2\)"):
        batcher.submit(GenerationRequest(prompt="<ImageHere>", pixels=[], max_new_tokens=1))
    assert batcher.load() == {"running": 0, "waiting": 2}


def test_dicom_data_url(sample_data_dir):
    dicom = sample_data_dir / "dicom" / "generated_dx_from_real_png.dcm"
    url = "data:application/dicom;base64," + base64.b64encode(dicom.read_bytes()).decode()
    image = load_image_url(url, None, 40_000_000)
    assert image.mode == "RGB" and min(image.size) >= 8
    with pytest.raises(APIError, match="image is .* pixels; the limit is 100"):
        load_image_url(url, None, 100)


def test_png_pixel_cap_before_decoding(seed_reference_dir):
    png = seed_reference_dir / "images" / "xray_0.png"
    url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    with pytest.raises(APIError) as info:
        load_image_url(url, None, 1000)
    assert info.value.status == 400 and info.value.code == "image_too_large"


def test_local_paths(tmp_path, seed_reference_dir):
    (tmp_path / "a.png").write_bytes((seed_reference_dir / "images" / "xray_0.png").read_bytes())
    root = tmp_path.resolve()
    assert load_image_url("a.png", root, 10**8).size == load_image_url(f"file://{root}/a.png", root, 10**8).size
    for url, message in [("a.png", "local image paths are not accepted"), ("../x.png", "outside the allowed folder"),
                         ("b.png", "image file not found"), ("ftp://host/a.png", "unsupported image URL scheme")]:
        with pytest.raises(APIError, match=message):
            load_image_url(url, None if "not accepted" in message else root, 10**8)


def _messages(*items):
    return [ChatMessage.model_validate(m) for m in items]


def test_messages_onto_the_template():
    tpl = registry.get_conversation_template("default")
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    plan = build_prompt(_messages(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image, {"type": "text", "text": "Findings?"}]},
        {"role": "assistant", "content": "Clear."},
        {"role": "user", "content": "Effusion?"},
    ), tpl)
    assert plan.prompt == ("Be brief.###Patient: <Img><ImageHere></Img> Findings?###Doctor: Clear.###"
                           "Patient: Effusion?###Doctor:")
    assert plan.image_urls == ["data:,"]
    for bad, message in [
        ([{"role": "user", "content": "hi"}], "no image"),
        ([{"role": "user", "content": [image]}, {"role": "assistant", "content": "x"}], "last message must come from the user"),
        ([{"role": "user", "content": [image, {"type": "text", "text": "a ### b"}]}], "turn boundary"),
        ([{"role": "user", "content": [image, {"type": "text", "text": "<ImageHere>"}]}], "may not contain <ImageHere>"),
        ([{"role": "user", "content": [image]}, {"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
         "system message may only come first"),
    ]:
        with pytest.raises(APIError, match=message):
            build_prompt(_messages(*bad), tpl)
    two = build_prompt(_messages({"role": "user", "content": [image, image, {"type": "text", "text": "Compare."}]}),
                       tpl, max_images=2)
    assert two.prompt.count("<ImageHere>") == 2
