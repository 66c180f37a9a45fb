"""The server's slot engine: rows join and leave a static cache between steps and still decode as if alone."""
from __future__ import annotations

import pytest
import torch

from xraygpt.common.config import Config
from xraygpt.conversation.loading import load_model_and_processor
from xraygpt.datasets.image_io import load_medical_image
from xraygpt.serve.slot_batch import SlotDecodeBatch, kv_bytes_per_slot, row_buckets, slot_batch_for, slots_that_fit

QUESTIONS = ["Findings?", "Is there an effusion on the left side of the chest?", "Heart size?",
             "Describe the lungs, the heart, the mediastinum and the bones in detail please.", "Any opacity?"]


@pytest.fixture(scope="module")
def tiny(repo_root, seed_reference_dir):
    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    torch.manual_seed(0)
    model, processor = load_model_and_processor(cfg, torch.device("cpu"))
    images = sorted((seed_reference_dir / "images").glob("*.png"))
    pixels = [processor(load_medical_image(images[i % len(images)])) for i in range(len(QUESTIONS))]
    return model, pixels


def _inputs(model, pixels, indices):
    with torch.inference_mode():
        features = model.encode_qformer(torch.stack([pixels[i] for i in indices]))
        return model.prepare_generation_inputs(None, [f"<Img><ImageHere></Img> {QUESTIONS[i]}" for i in indices],
                                               image_features=features)


def _alone(model, pixels, index, steps):
    embeds, mask = _inputs(model, pixels, [index])
    with torch.inference_mode():
        out = model.llama_model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps,
                                         min_new_tokens=steps, do_sample=False)
    return out[0, -steps:].tolist()


def test_rows_joining_and_leaving_decode_as_if_alone(tiny):
    model, pixels = tiny
    steps = 12
    reference = [_alone(model, pixels, i, 20) for i in range(len(QUESTIONS))]
    batch = slot_batch_for(model, slots=4)
    assert isinstance(batch, SlotDecodeBatch) and batch.window == 2048 and batch.buckets == [1, 2, 4]
    produced: dict[int, list[int]] = {}
    order: list[int] = []  # request index of each row, in row order
    nxt = torch.empty(0, dtype=torch.long)

    def admit(indices):
        nonlocal nxt
        embeds, mask = _inputs(model, pixels, indices)
        tokens = batch.prefill(embeds, mask).argmax(-1)
        for i, token in zip(indices, tokens.tolist()):
            produced[i] = [token]
        order.extend(indices)
        nxt = torch.cat([nxt, tokens])

    def step(times):
        nonlocal nxt
        for _ in range(times):
            nxt = batch.step(nxt).argmax(-1)
            for i, token in zip(order, nxt.tolist()):
                produced[i].append(token)

    def leave(done):
        nonlocal nxt
        keep = [r for r, i in enumerate(order) if i not in done]
        batch.keep(keep)
        order[:] = [order[r] for r in keep]
        nxt = nxt[keep]

    admit([0])
    step(3)
    admit([1, 2])  # left-padded together, joined to a running row of another length
    step(4)
    leave({0})  # frees slot 0 ...
    admit([3])  # ... which the next request reuses, beside rows in slots 1 and 2
    assert batch.slot_of == [1, 2, 0]
    step(4)
    leave({1, 2})
    admit([4])
    step(steps)
    assert {i: len(t) for i, t in produced.items()} == {0: 8, 1: 9, 2: 9, 3: 17, 4: 13}
    for i, tokens in produced.items():
        assert tokens == reference[i][:len(tokens)], f"request {i}"
    assert batch.captures() == 0  # CPU: the same step, eagerly


def test_parked_slots_never_disturb_running_rows(tiny):
    """A row decoding in slot 2 of bucket 4 beside parked slots gives the same tokens as in slot 0 alone."""
    model, pixels = tiny
    reference = _alone(model, pixels, 1, 8)
    batch = slot_batch_for(model, slots=4)
    embeds, mask = _inputs(model, pixels, [0, 0, 1])
    first = batch.prefill(embeds, mask).argmax(-1)
    batch.keep([2])  # rows 0 and 1 leave: slots 0 and 1 parked, the row lives in slot 2
    tokens, nxt = [int(first[2])], first[2:]
    for _ in range(7):
        nxt = batch.step(nxt).argmax(-1)
        tokens.append(int(nxt[0]))
    assert batch.slot_of == [2] and tokens == reference


def test_row_buckets_and_refusals(tiny):
    assert row_buckets(1) == [1] and row_buckets(32) == [1, 2, 4, 8, 16, 32] and row_buckets(12) == [1, 2, 4, 8, 12]
    model, pixels = tiny
    batch = slot_batch_for(model, slots=1)
    embeds, mask = _inputs(model, pixels, [0, 1])
    with pytest.raises(ValueError, match="2 new rows but only 1 free slots"):
        batch.prefill(embeds, mask)


def test_the_cache_is_sized_to_free_memory(caplog):
    from types import SimpleNamespace

    vicuna = SimpleNamespace(num_attention_heads=32, num_key_value_heads=32, hidden_size=4096)
    per_slot = kv_bytes_per_slot(vicuna, layers=32, window=2048, element_size=2)
    assert per_slot == 2**30  # 1 GiB per slot for Vicuna-7B in bf16
    assert slots_that_fit(16, per_slot, free=100 * 2**30) == 16
    caplog.set_level("WARNING")
    assert slots_that_fit(16, per_slot, free=9 * 2**30) == 6  # a 24 GB card after the 15 GiB model
    assert "16 slots of 1.00 GiB do not fit in 9.0 GiB" in caplog.text and "using 6" in caplog.text
    assert slots_that_fit(4, per_slot, free=3 * 2**30) == 0


class _ForcedTokens:
    """A grammar that allows exactly one token per step: the given sequence, then EOS."""

    def __init__(self, tokens, eos):
        self.left, self.eos, self.accepted = list(tokens), eos, []

    def mask_(self, logits):
        allowed = self.left[0] if self.left else self.eos
        keep = logits[allowed].clone()
        logits.fill_(float("-inf"))
        logits[allowed] = keep
        return logits

    def accept(self, token):
        assert token == (self.left.pop(0) if self.left else self.eos)
        self.accepted.append(token)
        return not self.left


def test_a_constrained_row_follows_its_grammar_beside_a_free_row(tiny):
    import threading

    from xraygpt.serve.batcher import ContinuousBatcher, GenerationRequest

    model, pixels = tiny
    tokenizer = model.tokenizer
    forced = tokenizer("no pleural effusion", add_special_tokens=False).input_ids
    grammar = _ForcedTokens(forced, tokenizer.eos_token_id)
    done, finished = {}, threading.Event()

    def collect(name):
        def on_event(kind, data):
            if kind in ("done", "error"):
                done[name] = (kind, data)
                if len(done) == 2:
                    finished.set()
        return on_event

    prompt = "<Img><ImageHere></Img> Findings?"
    batcher = ContinuousBatcher(model, max_batch_size=2, max_wait_ms=200).start()
    try:
        batcher.submit(GenerationRequest(prompt=prompt, pixels=[pixels[0]], max_new_tokens=12, grammar=grammar,
                                         stops=("###",), on_event=collect("constrained")))
        batcher.submit(GenerationRequest(prompt=prompt, pixels=[pixels[1]], max_new_tokens=12,
                                         on_event=collect("free")))
        assert finished.wait(timeout=120)
    finally:
        batcher.stop()
    kind, data = done["constrained"]
    assert kind == "done" and data["finish_reason"] == "stop"
    assert grammar.accepted == forced + [tokenizer.eos_token_id]
    assert data["text"] == tokenizer.decode(forced, skip_special_tokens=True).strip()
    assert done["free"][0] == "done" and done["free"][1]["completion_tokens"] >= 1
