"""The fast decoder (static KV cache + CUDA-graph step) must produce what transformers' generate produces."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xraygpt.models import graph_decoding
from xraygpt.models.graph_decoding import (
    DecodeSettings,
    FastGenerator,
    choose_next_tokens,
    fast_generate,
    unsupported_reason,
)

VOCAB, HIDDEN = 1000, 64


def _tiny_llama(device: str = "cpu", dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    for param in model.parameters():  # large weights give peaked, input-dependent logits
        torch.nn.init.normal_(param, std=0.3)
    return model.to(device=device, dtype=dtype)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return _tiny_llama()


def _prompt(batch: int = 3, length: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, HIDDEN, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, :3] = 0  # left padding of different lengths
    if batch > 2:
        mask[2, :1] = 0
    return embeds, mask


@pytest.mark.parametrize("max_new_tokens", [1, 5, 24])
def test_greedy_matches_hf_generate_with_left_padding(llama, max_new_tokens):
    embeds, mask = _prompt()
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False)
    expected = llama.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    assert torch.equal(fast_generate(llama, embeds, mask, **kwargs), expected)


def test_padded_row_equals_the_same_prompt_alone(llama):
    embeds, mask = _prompt()
    batched = fast_generate(llama, embeds, mask, max_new_tokens=12, do_sample=False)
    alone = fast_generate(llama, embeds[1:2, 3:], None, max_new_tokens=12, do_sample=False)
    assert torch.equal(batched[1:2], alone)


def test_eos_and_min_new_tokens_match_hf(llama):
    embeds, mask = _prompt()
    many_eos = list(range(3, 400))  # ~40% of the vocabulary ends a row, so rows stop at different steps
    for kwargs in (dict(max_new_tokens=12, eos_token_id=many_eos),
                   dict(max_new_tokens=12, min_new_tokens=5, eos_token_id=many_eos)):
        expected = llama.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, **kwargs)
        got = fast_generate(llama, embeds, mask, do_sample=False, **kwargs)
        assert torch.equal(got, expected), kwargs
        assert got.shape[1] < 12  # generation really stopped early
    assert (got[:, :5] != 0).all()  # min_new_tokens held EOS back (pad 0 would follow an EOS)


def test_repetition_penalty_matches_hf(llama):
    # No left padding: transformers 5.24 offsets its penalty window by the padding length when only
    # inputs_embeds are given (5.17, used on the GPU machine, does not); both agree without padding.
    embeds, _ = _prompt()
    kwargs = dict(max_new_tokens=20, do_sample=False, repetition_penalty=1.3)
    expected = llama.generate(inputs_embeds=embeds, **kwargs)
    assert torch.equal(fast_generate(llama, embeds, None, **kwargs), expected)


def test_stop_sequence_ends_row_after_the_pattern(llama):
    embeds, mask = _prompt()
    free = fast_generate(llama, embeds, mask, max_new_tokens=20, do_sample=False, eos_token_id=None)
    pattern = free[0, 6:8].tolist()
    stopped = fast_generate(llama, embeds, mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                            stop_sequences=[pattern])
    first_end = next(i + 2 for i in range(19) if free[0, i:i + 2].tolist() == pattern)
    assert torch.equal(stopped[0, :first_end], free[0, :first_end])
    assert (stopped[0, first_end:] == 0).all()


def test_stop_string_cuts_at_the_completing_token(llama, seed_reference_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(seed_reference_dir / "tokenizer")
    embeds, mask = _prompt(batch=1)
    free = fast_generate(llama, embeds, mask, max_new_tokens=30, do_sample=False, eos_token_id=None)[0]
    texts = [tokenizer.decode(free[:n], skip_special_tokens=True) for n in range(31)]
    # A stop string that first appears when token 20 is added (its last 3 characters at that point).
    k = next(n for n in range(20, 31) if texts[n][-3:] not in texts[n - 1])
    stop = texts[k][-3:]
    got = FastGenerator(llama, sync_every=4).generate(embeds, mask, max_new_tokens=30, do_sample=False,
                                                      eos_token_id=None, stop_strings=[stop], tokenizer=tokenizer)
    assert torch.equal(got[0], free[:k])


def test_sampling_top_k_one_is_greedy_and_seeded_sampling_repeats(llama):
    embeds, mask = _prompt()
    greedy = fast_generate(llama, embeds, mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(fast_generate(llama, embeds, mask, max_new_tokens=10, do_sample=True, top_k=1), greedy)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(fast_generate(llama, embeds, mask, max_new_tokens=10, do_sample=True, temperature=1.5,
                                  top_k=0, top_p=1.0, eos_token_id=None))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], greedy)


def test_sampler_draws_from_the_warped_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows = logits.repeat(40000, 1)
    torch.manual_seed(0)
    settings = DecodeSettings(max_new_tokens=1, do_sample=True, temperature=0.7)
    freq = torch.bincount(choose_next_tokens(rows.clone(), settings), minlength=6).float() / rows.shape[0]
    assert torch.allclose(freq, torch.softmax(logits / 0.7, -1), atol=0.01)
    # top_p 0.8 keeps the smallest set with mass >= 0.8 (tokens 0-2 here), renormalised.
    top_p = DecodeSettings(max_new_tokens=1, do_sample=True, top_p=0.8)
    freq = torch.bincount(choose_next_tokens(rows.clone(), top_p), minlength=6).float() / rows.shape[0]
    kept = torch.softmax(logits[:3], -1)
    assert torch.allclose(freq[:3], kept, atol=0.01) and freq[3:].sum() == 0
    top_k = DecodeSettings(max_new_tokens=1, do_sample=True, top_k=2)
    assert set(choose_next_tokens(rows.clone(), top_k).unique().tolist()) == {0, 1}


def test_matches_reference_greedy_tokens_of_the_seed_fixture(seed_reference_dir):
    llm = LlamaForCausalLM.from_pretrained(seed_reference_dir / "vicuna", dtype=torch.float32).eval()
    expected = torch.load(seed_reference_dir / "expected.pt", weights_only=True)
    greedy = json.loads((seed_reference_dir / "samples.json").read_text())["greedy"]
    first, second = (torch.tensor(ids)[None] for ids in greedy["segment_ids"])
    embed = llm.get_input_embeddings()
    with torch.no_grad():
        embeds = torch.cat([embed(first), expected["inputs_llama"][0:1], embed(second)], dim=1)
    got = fast_generate(llm, embeds, None, max_new_tokens=16, do_sample=False)
    assert got[0].tolist() == expected["greedy_tokens"].tolist()


def test_capture_is_reused_between_calls(llama):
    generator = FastGenerator(llama)
    embeds, mask = _prompt()
    first = generator.generate(embeds, mask, max_new_tokens=8, do_sample=False)
    second = generator.generate(embeds, mask, max_new_tokens=20, do_sample=False)
    assert len(generator._runners) == 1  # same batch and cache bucket: state reset, nothing rebuilt
    assert torch.equal(second[:, :8], first)


def test_streamer_receives_every_token_in_order(llama):
    class Collector:
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, value):
            self.tokens += value.tolist()

        def end(self):
            self.ended = True

    embeds, mask = _prompt(batch=1)
    streamer = Collector()
    out = fast_generate(llama, embeds, mask, max_new_tokens=9, do_sample=False, streamer=streamer)
    assert streamer.tokens == out[0].tolist() and streamer.ended
    with pytest.raises(ValueError, match="batch size 1"):
        fast_generate(llama, *_prompt(), max_new_tokens=2, streamer=Collector())


def test_unsupported_requests_go_to_hf_generate(llama):
    assert unsupported_reason({"max_new_tokens": 5, "num_beams": 3}) == "beam search"
    assert "unsupported" in unsupported_reason({"max_new_tokens": 5, "no_repeat_ngram_size": 3})
    assert unsupported_reason({"max_new_tokens": 5, "do_sample": True, "top_p": 0.9}) is None
    with pytest.raises(ValueError, match="beam search"):
        FastGenerator(llama).generate(torch.zeros(1, 1, HIDDEN), max_new_tokens=2, num_beams=2)
    # The model's seam: beams (and CPU tensors) take transformers' generate and give its result.
    holder = torch.nn.Module()
    holder.llama_model = llama
    embeds, mask = _prompt()
    kwargs = dict(max_new_tokens=6, num_beams=2, do_sample=False)
    expected = llama.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    assert torch.equal(graph_decoding.generate(holder, embeds, mask, **kwargs), expected)


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager_step_and_hf():
    llama = _tiny_llama("cuda")
    embeds, mask = (t.cuda() for t in _prompt())
    kwargs = dict(max_new_tokens=40, do_sample=False)
    graphed = FastGenerator(llama, use_cuda_graph=True)
    out = graphed.generate(embeds, mask, **kwargs)
    assert graphed.captures() > 0  # the decode steps were captured (and replayed for the remaining tokens)
    eager = FastGenerator(llama, use_cuda_graph=False).generate(embeds, mask, **kwargs)
    assert torch.equal(out, eager)
    assert torch.equal(out, llama.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs))
    for _ in range(2):  # second and third calls replay the captured prefill and decode step
        assert torch.equal(graphed.generate(embeds, mask, **kwargs), out)
    assert any(r.prefill_graphs and any(g._graphs for g in r.prefill_graphs.values()) for r in graphed._runners.values())
