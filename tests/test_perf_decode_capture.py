"""Product-path decoding: steps captured once (at warm-up) serve prompts of every length, with the same tokens.

On CPU there are no CUDA graphs, but the bookkeeping is the same: every decode step goes through one
``GraphedCall`` per (settings, attention span) of a runner, so "captured once, reused" is checked by the
identity and call counts of those objects; the GPU test counts real captures.
"""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from xraygpt.models import llama_decode
from xraygpt.models.graph_decoding import CancelCriterion, FastGenerator, attention_spans, with_cancel_criterion

HIDDEN = 64


def _llama(device: str = "cpu", kv_heads: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=500, hidden_size=HIDDEN, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    for param in model.parameters():
        nn.init.normal_(param, std=0.3)
    return model.to(device).requires_grad_(False)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _prompt(length: int, batch: int = 1, seed: int = 0, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, HIDDEN, generator=gen).to(device)
    return embeds, torch.ones(batch, length, dtype=torch.long, device=device)


def test_attention_spans_double_up_to_the_cache_length():
    assert attention_spans(256) == [256]
    assert attention_spans(640) == [256, 512, 640]
    assert attention_spans(2176) == [256, 512, 1024, 2048, 2176]


def test_warm_up_steps_serve_every_prompt_length_with_hf_tokens():
    llm = _llama()
    generator = FastGenerator(llm)
    generator.warm_up(batch=1, cache_len=640)
    (runner,) = generator._runners.values()
    assert runner.cache_len == 640 and generator.runners_built == 1
    warmed = dict(runner.decode_graphs)
    assert sorted(span for _, span in warmed) == [256, 512, 640]  # one step per attention span
    calls = {key: call.calls for key, call in warmed.items()}
    # Prompts of different lengths, one crossing into the 512 span while decoding.
    for length, new in ((5, 12), (23, 9), (250, 12), (40, 3)):
        embeds, mask = _prompt(length, seed=length)
        got = generator.generate(embeds, mask, max_new_tokens=new, do_sample=False)
        expected = llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new, do_sample=False)
        assert torch.equal(got, expected), length
    assert generator.runners_built == 1 and list(generator._runners.values()) == [runner]
    assert runner.decode_graphs == warmed  # the very same step objects, none added
    used = {span for (_, span), call in warmed.items() if call.calls > calls[(_, span)]}
    assert used == {256, 512}


def test_a_longer_request_than_the_warm_cache_builds_one_new_runner():
    llm = _llama()
    generator = FastGenerator(llm)
    generator.warm_up(batch=1, cache_len=128)
    embeds, mask = _prompt(120)
    generator.generate(embeds, mask, max_new_tokens=20, do_sample=False)
    generator.generate(*_prompt(100, seed=1), max_new_tokens=20, do_sample=False)
    assert generator.runners_built == 2  # 128 too short; the 256 runner then serves both requests


def test_fused_step_equals_transformers_forward_step_with_grouped_kv_heads():
    llm = _llama(kv_heads=2)
    embeds, mask = _prompt(9, batch=3, seed=5)
    mask[1, :4] = 0
    kwargs = dict(max_new_tokens=14, do_sample=False)
    reference = FastGenerator(llm, step="hf").generate(embeds, mask, **kwargs)
    for step in ("modules", "fused"):
        assert torch.equal(FastGenerator(llm, step=step).generate(embeds, mask, **kwargs), reference), step
    assert torch.equal(reference, llm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs))


def test_fusing_keeps_the_modules_working_on_views_of_one_tensor():
    llm = _llama()
    attn = llm.model.layers[0].self_attn
    x = torch.randn(2, 5, HIDDEN)
    before = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
    fused = llama_decode.fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj])
    assert fused.shape == (3 * HIDDEN, HIDDEN)
    for module in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert module.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(before, [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]))
    assert llama_decode.fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj]) is fused  # idempotent
    trainable = nn.Linear(4, 4)
    assert llama_decode.fuse_rows([trainable, nn.Linear(4, 4)]) is None  # never touches trainable weights


def test_streaming_reads_the_gpu_in_chunks_and_sends_every_token_once():
    class Collector:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            self.ended = True

    llm = _llama()
    embeds, mask = _prompt(11)
    streamer = Collector()
    out = FastGenerator(llm, stream_every=4, first_tokens_now=2).generate(
        embeds, mask, max_new_tokens=21, min_new_tokens=21, do_sample=False, streamer=streamer)
    assert streamer.puts[:2] == [out[0, :1].tolist(), out[0, 1:2].tolist()]  # the first tokens one by one, at once
    assert sum(streamer.puts, []) == out[0].tolist() and streamer.ended
    assert len(streamer.puts) <= 2 + 19 // 4 + 2  # then in chunks: not one host read per token


def test_cancel_event_stops_generation_early():
    llm = _llama()
    embeds, mask = _prompt(6)
    cancel = threading.Event()

    class CancelAfterFirst:
        def put(self, value):
            cancel.set()

        def end(self):
            pass

    out = FastGenerator(llm, stream_every=4).generate(embeds, mask, max_new_tokens=40, min_new_tokens=40,
                                                      do_sample=False, streamer=CancelAfterFirst(), cancel=cancel)
    assert out.shape[1] < 40
    # The transformers path gets the same event as a stopping criterion.
    cancel = threading.Event()
    cancel.set()
    kwargs = with_cancel_criterion({"max_new_tokens": 30, "min_new_tokens": 0}, cancel)
    assert isinstance(kwargs["stopping_criteria"][-1], CancelCriterion)
    stopped = llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, **kwargs)
    assert stopped.shape[1] == 1


def test_low_resource_explains_a_missing_int8_package(monkeypatch):
    from xraygpt.models import llm as llm_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(llm_module, "_installed", lambda name: False)
    with pytest.raises(RuntimeError) as auto:
        llm_module.low_resource_backend("auto")
    assert "torchao" in str(auto.value) and "bitsandbytes" in str(auto.value) and "\n" not in str(auto.value)
    with pytest.raises(RuntimeError, match=r"low_resource_backend: torchao, but torchao is not installed"):
        llm_module.low_resource_backend("torchao")
    monkeypatch.setattr(llm_module, "_installed", lambda name: name == "bitsandbytes")
    assert llm_module.low_resource_backend("auto") == "bitsandbytes"


@pytest.mark.gpu
def test_cuda_decode_captures_happen_only_at_warm_up():
    llm = _llama("cuda")
    generator = FastGenerator(llm)
    generator.warm_up(batch=1, cache_len=640)
    (runner,) = generator._runners.values()

    def decode_captures():
        return sum(call.captures for call in runner.decode_graphs.values())

    warm = decode_captures()
    assert warm == 3
    eager = FastGenerator(llm, use_cuda_graph=False)
    for length in (5, 37, 250):
        embeds, mask = _prompt(length, seed=length, device="cuda")
        kwargs = dict(max_new_tokens=30, do_sample=False)
        assert torch.equal(generator.generate(embeds, mask, **kwargs), eager.generate(embeds, mask, **kwargs))
    assert decode_captures() == warm and generator.runners_built == 1


def test_a_failing_compile_falls_back_to_the_same_uncompiled_step(monkeypatch):
    llm = _llama()
    embeds, mask = _prompt(8, seed=2)
    expected = FastGenerator(llm, step="fused").generate(embeds, mask, max_new_tokens=10, do_sample=False)

    def broken(*args, **kwargs):
        raise RuntimeError("compiler unavailable")

    step = llama_decode.LlamaDecodeStep(llm, fuse=True)
    step.pre_fn, step.compiled = broken, True  # what a compile error at the first call looks like
    generator = FastGenerator(llm, step="fused")
    generator._kernel = step
    assert torch.equal(generator.generate(embeds, mask, max_new_tokens=10, do_sample=False), expected)
    assert not step.compiled and step.pre_fn is llama_decode.attention_inputs
