"""Fast batched decoding for a Hugging Face causal LM driven by ``inputs_embeds``.

Why this exists: ``generate()`` re-launches ~600 small kernels from Python for every new token of a 7B LLaMA
and grows a dynamic KV cache, so batch-1 decode runs at ~10% of what the GPU's memory bandwidth allows.
Here the KV cache is static (HF ``StaticCache``) and one whole decode step - LLM forward (by default the fused
step of :mod:`xraygpt.models.llama_decode`), logits processing, token choice, stop checks, embedding of the
chosen token - is captured into a CUDA graph and replayed. The host reads results through asynchronous copies,
one chunk of steps behind the GPU, so the GPU never waits for Python, also while streaming.

Semantics follow ``LlamaForCausalLM.generate(inputs_embeds=..., attention_mask=...)``: left padding,
positions from the attention mask, returned ids are the new tokens only, finished rows are filled with
``pad_token_id``, repetition penalty counts generated tokens only, sampling warps are applied in the order
repetition penalty -> temperature -> top-k -> top-p. Greedy decoding picks ``argmax`` of the same logits, so on
CPU / in float32 the tokens equal HF's (tested); CUDA graph replay runs the very kernels of the eager step.

Nothing captured depends on the prompt length: a runner (static cache + buffers) is kept per (batch size,
cache length), a request reuses the smallest runner of its batch size that is long enough, and its decode steps
are captured once per (decode settings, attention span) - at load time with :meth:`FastGenerator.warm_up`, so a
chat replays captured steps from its first turn. ``use_cuda_graph=False`` (or ``XRAYGPT_CUDA_GRAPHS=0``) runs the
identical step eagerly; ``XRAYGPT_DECODE_STEP=hf`` uses the transformers forward inside the step.
Beam search and other ``generate`` options are not handled here: check :func:`unsupported_reason` first.
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xraygpt.models import llama_decode

log = logging.getLogger(__name__)

# Options this decoder implements; anything else (beams, constraints, ...) must go to HF generate.
_SUPPORTED = {
    "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
    "eos_token_id", "pad_token_id", "num_beams", "num_return_sequences", "stop_sequences", "stop_strings",
    "tokenizer", "streamer", "use_cache", "length_penalty",
}
# generate()'s own fallbacks when neither the caller nor the model's generation_config sets a value.
_HF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "do_sample": False}


def unsupported_reason(generation_kwargs: dict) -> str | None:
    """Return why these ``generate`` kwargs need the HF path, or None when the fast path handles them."""
    unknown = sorted(set(generation_kwargs) - _SUPPORTED)
    if unknown:
        return f"unsupported generation options {unknown}"
    if int(generation_kwargs.get("num_beams") or 1) != 1:
        return "beam search"
    if int(generation_kwargs.get("num_return_sequences") or 1) != 1:
        return "num_return_sequences > 1"
    if "max_new_tokens" not in generation_kwargs:
        return "max_new_tokens is required"
    return None


@dataclass(frozen=True)
class DecodeSettings:
    """Everything that changes the captured step; hashable so it can key the graph cache."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    stop_sequences: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def resolve(cls, llm: nn.Module, kwargs: dict) -> DecodeSettings:
        """Merge call kwargs over the model's generation_config over generate()'s defaults, as HF does."""
        gen_cfg = getattr(llm, "generation_config", None)

        def pick(name, default=None):
            if kwargs.get(name) is not None:
                return kwargs[name]
            value = getattr(gen_cfg, name, None)
            return value if value is not None else _HF_DEFAULTS.get(name, default)

        eos = pick("eos_token_id")
        eos_ids = () if eos is None else tuple(int(e) for e in ([eos] if isinstance(eos, int) else eos))
        pad = pick("pad_token_id")
        if pad is None:
            pad = eos_ids[0] if eos_ids else 0
        do_sample = bool(pick("do_sample"))
        top_k = int(pick("top_k") or 0) if do_sample else 0
        return cls(
            max_new_tokens=int(kwargs["max_new_tokens"]),
            min_new_tokens=int(kwargs.get("min_new_tokens") or 0),
            do_sample=do_sample,
            temperature=float(pick("temperature")) if do_sample else 1.0,
            top_k=top_k,
            top_p=float(pick("top_p")) if do_sample else 1.0,
            repetition_penalty=float(pick("repetition_penalty")),
            eos_token_ids=eos_ids,
            pad_token_id=int(pad),
            stop_sequences=tuple(tuple(int(t) for t in s) for s in (kwargs.get("stop_sequences") or ()) if len(s)),
        )

    def cache_key(self) -> tuple:
        # max_new_tokens / min_new_tokens only size buffers and the loop; they stay out of the graph key.
        return (self.do_sample, self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                self.eos_token_ids, self.pad_token_id, self.stop_sequences)


def _cache_kwarg_name(llm: nn.Module) -> str:
    """transformers <= 5.17 calls the cache ``past_key_values``; later versions ``cache``."""
    params = inspect.signature(llm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def choose_next_tokens(logits: torch.Tensor, settings: DecodeSettings, seen: torch.Tensor | None = None,
                       suppress_eos: torch.Tensor | None = None, eos_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row from float32 ``logits`` [B, V] with HF's processing order; graph-safe (no syncs).

    ``seen`` [B, V] bool marks generated tokens for the repetition penalty; ``suppress_eos`` is a 0-dim bool
    tensor, True while ``min_new_tokens`` is not reached, and ``eos_ids`` the EOS ids on the logits' device. Sampling uses the Gumbel-max trick (argmax of
    logits + Gumbel noise), which draws from softmax(logits) without multinomial's host synchronisation.
    """
    if seen is not None and settings.repetition_penalty != 1.0:
        p = settings.repetition_penalty
        penalised = torch.where(logits < 0, logits * p, logits / p)
        logits = torch.where(seen, penalised, logits)
    if suppress_eos is not None and eos_ids is not None:
        blocked = torch.zeros_like(logits, dtype=torch.bool).index_fill_(1, eos_ids, True) & suppress_eos
        logits = logits.masked_fill(blocked, float("-inf"))
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    if settings.temperature != 1.0:
        logits = logits / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        mass_below = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = mass_below <= 1.0 - settings.top_p
        drop_sorted[:, -1] = False  # always keep the best token
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    uniform = torch.rand_like(logits).clamp_(min=1e-20, max=1.0 - 1e-7)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


class _EmitState:
    """Buffers that depend on the decode settings (stop patterns, EOS ids); one per settings key."""

    def __init__(self, settings: DecodeSettings, batch: int, device: torch.device):
        longest_stop = max((len(s) for s in settings.stop_sequences), default=0)
        self.recent = torch.full((batch, max(longest_stop, 1)), -1, dtype=torch.long, device=device)
        self.stop_patterns = [torch.tensor(s, dtype=torch.long, device=device) for s in settings.stop_sequences]
        self.eos = torch.tensor(settings.eos_token_ids or [-1], dtype=torch.long, device=device)


class _Snapshot:
    """Host copies of the tokens / stop flags after ``steps`` steps, copied without blocking the host."""

    def __init__(self, runner: "_DecodeRunner"):
        pin = runner.tokens.is_cuda
        self.tokens = torch.empty(runner.tokens.shape, dtype=torch.long, pin_memory=pin)
        self.finished = torch.empty(runner.finished.shape, dtype=torch.bool, pin_memory=pin)
        self.finish_step = torch.empty(runner.finish_step.shape, dtype=torch.long, pin_memory=pin)
        self.event = torch.cuda.Event() if pin else None
        self.steps = 0

    def take(self, runner: "_DecodeRunner", steps: int) -> "_Snapshot":
        self.steps = steps
        self.tokens.copy_(runner.tokens, non_blocking=True)
        self.finished.copy_(runner.finished, non_blocking=True)
        self.finish_step.copy_(runner.finish_step, non_blocking=True)
        if self.event is not None:
            self.event.record()
        return self

    def wait(self) -> "_Snapshot":
        if self.event is not None:
            self.event.synchronize()
        return self


def attention_spans(cache_len: int, smallest: int = 256) -> list[int]:
    """Cache prefix lengths the decode step may attend over: powers of two from ``smallest``, then cache_len."""
    spans, span = [], smallest
    while span < cache_len:
        spans.append(span)
        span *= 2
    return spans + [cache_len]


class _DecodeRunner:
    """Static buffers, KV cache and the captured steps for one (batch size, cache length).

    Nothing here depends on the prompt length: a prompt only sets the write slot, positions and masks
    (device tensors), so the decode steps captured once serve every later prompt. Captures are kept per
    (decode settings, attention span), prefill captures per (settings, prompt length).
    """

    def __init__(self, llm: nn.Module, batch: int, cache_len: int, use_graph: bool, kernel=None, lag_slots: int = 3):
        from transformers import StaticCache

        self.llm, self.batch, self.cache_len = llm, batch, cache_len
        self.use_graph = use_graph
        self.kernel = kernel  # llama_decode.LlamaDecodeStep, or None: the transformers forward
        self.spans = attention_spans(cache_len) if kernel is not None else [cache_len]
        self.decode_graphs: dict[tuple, GraphedCall] = {}
        self.prefill_graphs: dict[tuple, GraphedCall] = {}
        self.cache_kw = _cache_kwarg_name(llm)
        self.cache = StaticCache(config=llm.config, max_cache_len=cache_len)
        self.kv = None  # the cache's per-layer tensors, once the first prefill has allocated them
        embed = llm.get_input_embeddings()
        device, dtype = embed.weight.device, embed.weight.dtype
        self.embed, self.dtype, self.device = embed, dtype, device
        vocab = embed.weight.shape[0]
        self.max_steps = cache_len  # upper bound on tokens a single call may produce with this cache
        z = dict(device=device)
        self.next_embeds = torch.zeros(batch, 1, embed.weight.shape[1], dtype=dtype, **z)
        self.key_valid = torch.zeros(batch, cache_len, dtype=torch.bool, **z)
        self.position = torch.zeros(batch, dtype=torch.long, **z)
        self.write_slot = torch.zeros(1, dtype=torch.long, **z)
        self.step_index = torch.zeros(1, dtype=torch.long, **z)
        self.min_steps = torch.zeros((), dtype=torch.long, **z)
        self.tokens = torch.zeros(batch, cache_len, dtype=torch.long, **z)
        self.finished = torch.zeros(batch, dtype=torch.bool, **z)
        self.finish_step = torch.zeros(batch, dtype=torch.long, **z)
        self.seen = torch.zeros(batch, vocab, dtype=torch.bool, **z)
        self.mask_min = torch.finfo(dtype).min
        self.cos = self.sin = None
        if kernel is not None:
            self.cos, self.sin = kernel.rotary_table(cache_len, device, dtype)
        self._emit_states: dict[tuple, _EmitState] = {}
        self.settings: DecodeSettings | None = None
        self.state: _EmitState | None = None
        self.snapshots = [_Snapshot(self) for _ in range(lag_slots)]
        self.slot_host = 0  # host copy of write_slot: the span of the next step is known without a sync

    def use(self, settings: DecodeSettings) -> None:
        """Switch to ``settings`` (their captured steps and stop buffers; built on first use)."""
        key = settings.cache_key()
        if key not in self._emit_states:
            self._emit_states[key] = _EmitState(settings, self.batch, self.device)
        self.settings, self.state = settings, self._emit_states[key]

    # -- one token for every row, from the logits of the last position; graph-safe -----------------------
    def _emit(self, logits: torch.Tensor) -> None:
        s, state = self.settings, self.state
        suppress = (self.step_index[0] < self.min_steps) if s.min_new_tokens else None
        seen = self.seen if s.repetition_penalty != 1.0 else None
        chosen = choose_next_tokens(logits.float(), s, seen, suppress, state.eos if s.eos_token_ids else None)
        chosen = torch.where(self.finished, s.pad_token_id, chosen)
        self.tokens.index_copy_(1, self.step_index, chosen[:, None])
        if seen is not None:
            self.seen.scatter_(1, chosen[:, None], True)
        done_now = torch.isin(chosen, state.eos)
        if state.stop_patterns:
            state.recent.copy_(torch.cat([state.recent[:, 1:], chosen[:, None]], dim=1))
            for pattern in state.stop_patterns:
                done_now |= (state.recent[:, -len(pattern):] == pattern).all(dim=1)
        done_now &= ~self.finished
        self.finish_step.copy_(torch.where(done_now, self.step_index, self.finish_step))
        self.finished |= done_now
        self.next_embeds.copy_(self.embed(chosen)[:, None, :])
        self.step_index += 1

    def _additive_mask(self, valid: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=self.dtype, device=valid.device)
        return torch.where(valid, zero, torch.full_like(zero, self.mask_min))

    def _decode_step(self, span: int) -> None:
        self.key_valid.index_fill_(1, self.write_slot, True)
        mask = self._additive_mask(self.key_valid)[:, None, None, :]
        if self.kernel is not None and self.kv is not None:
            cos = self.cos.index_select(0, self.position)[:, None, None, :]
            sin = self.sin.index_select(0, self.position)[:, None, None, :]
            logits = self.kernel(self.next_embeds, self.kv, cos, sin, self.write_slot, mask, span)
        else:
            out = self.llm(inputs_embeds=self.next_embeds, attention_mask=mask, position_ids=self.position[:, None],
                           use_cache=True, **{self.cache_kw: self.cache})
            logits = out.logits[:, -1, :]
        self._emit(logits)
        self.position += 1
        self.write_slot += 1

    def _reset(self, length: int) -> None:
        """Forget the previous request (cheap, eager): the cache counters, masks and outputs."""
        self.cache.reset()
        self.key_valid.zero_()
        self.tokens.fill_(self.settings.pad_token_id)
        self.finished.zero_()
        self.finish_step.fill_(self.max_steps)
        self.state.recent.fill_(-1)
        if self.settings.repetition_penalty != 1.0:
            self.seen.zero_()
        self.step_index.zero_()
        self.min_steps.fill_(self.settings.min_new_tokens)
        self.write_slot.fill_(length)
        self.slot_host = length

    def _prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run the prompt through the LLM and choose the first new token; graph-safe."""
        length = inputs_embeds.shape[1]
        device = inputs_embeds.device
        self.key_valid[:, :length] = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        self.position.copy_(positions[:, -1] + 1)
        # Causal over the prompt, padding keys hidden; a padding query sees itself so no row is empty (no NaN).
        causal = torch.ones(length, self.cache_len, dtype=torch.bool, device=device).tril()
        eye = torch.eye(length, self.cache_len, dtype=torch.bool, device=device)
        visible = (causal[None] & self.key_valid[:, None, :]) | eye[None]
        out = self.llm(inputs_embeds=inputs_embeds.to(self.dtype), attention_mask=self._additive_mask(visible)[:, None],
                       position_ids=positions, use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        self._emit(out.logits[:, -1, :])

    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Reset, then prefill: replayed from a CUDA graph for a prompt length seen before."""
        length = inputs_embeds.shape[1]
        self._reset(length)
        key = (self.settings.cache_key(), length)
        graphed = self.prefill_graphs.get(key)
        if graphed is None:
            graphed = self.prefill_graphs[key] = GraphedCall(self._prefill, enabled=self.use_graph)
        graphed(inputs_embeds, attention_mask)
        if self.kernel is not None and self.kv is None:
            self.kv = llama_decode.cache_tensors(self.cache)
            if self.kv is None:
                log.warning("this transformers StaticCache layout is not known; decoding with the transformers forward")
                self.kernel, self.spans = None, [self.cache_len]

    def span_for(self, slot: int) -> int:
        return next(s for s in self.spans if s > slot)

    def decode_call(self, span: int) -> "GraphedCall":
        """The (captured once, then replayed) decode step for these settings and this attention span."""
        key = (self.settings.cache_key(), span)
        graphed = self.decode_graphs.get(key)
        if graphed is None:
            graphed = self.decode_graphs[key] = GraphedCall(lambda: self._decode_step(span), enabled=self.use_graph)
        return graphed

    def step(self) -> None:
        """Advance every row by one token: graph replay when captured, else the same ops eagerly."""
        self.decode_call(self.span_for(self.slot_host))()
        self.slot_host += 1

    def capture_decode(self) -> None:
        """Warm-up: capture the decode step for every attention span now (junk tokens; the next prefill resets)."""
        for span in self.spans:
            start = max(span - 3, 0)
            self.write_slot.fill_(start)
            self.position.fill_(start)
            self.slot_host = start
            for _ in range(2):  # the first call runs eagerly, the second captures
                self.step()


class GraphedCall:
    """Replays ``fn(*tensors)`` from a CUDA graph, per input shape; the first call of a shape runs eagerly.

    PyTorch needs a warm-up run before capture (lazy initialisation, cuBLAS workspaces), so a shape is captured
    at its second call. ``fn`` must not synchronise with the host; its outputs come from static buffers, so
    callers copy them out before the next call. A failed capture logs once and leaves the call eager.
    With ``enabled=False`` (CPU, or graphs switched off) every call runs ``fn`` directly.
    ``captures`` counts the graphs made, so reuse can be checked.
    """

    def __init__(self, fn: Callable[..., torch.Tensor | None], enabled: bool = True):
        self.fn = fn
        self.enabled = enabled
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], object]] = {}
        self._seen: set[tuple] = set()
        self.failed = False
        self.calls = 0
        self.captures = 0

    def __call__(self, *args: torch.Tensor):
        self.calls += 1
        if not self.enabled:
            return self.fn(*args)
        # Autocast and grad mode change the captured kernels, so they are part of the key.
        key = (tuple((tuple(a.shape), a.dtype, a.device) for a in args), torch.is_grad_enabled(),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        entry = self._graphs.get(key)
        if entry is None:
            if self.failed or key not in self._seen:
                self._seen.add(key)
                return self._eager_on_side_stream(args)
            entry = self._capture(key, args)
            if entry is None:
                return self.fn(*args)
        graph, inputs, outputs = entry
        for static, new in zip(inputs, args):
            static.copy_(new)
        graph.replay()
        return outputs

    def _eager_on_side_stream(self, args):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return result

    def _capture(self, key, args):
        inputs = [a.clone() for a in args]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.fn(*inputs)
        except Exception as err:  # noqa: BLE001 - any capture failure means: stay eager, results unchanged
            log.warning("CUDA graph capture of %s failed (%s); running it eagerly.", _name(self.fn), err)
            self.failed = True
            return None
        self.captures += 1
        self._graphs[key] = (graph, inputs, outputs)
        return self._graphs[key]


def _name(fn) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


class FastGenerator:
    """Decoder for one LLM; keeps its runners (caches + captured steps) for the life of the process.

    A request reuses the smallest existing runner of its batch size whose cache is long enough, so after
    :meth:`warm_up` every prompt of a chat replays steps captured at load time. Requests are serialised
    (one lock): runners hold one request's state at a time.
    """

    def __init__(self, llm: nn.Module, use_cuda_graph: bool | None = None, cache_len_multiple: int = 128,
                 max_runners: int = 4, sync_every: int = 8, stream_every: int = 4, first_tokens_now: int = 6,
                 prompt_len_multiple: int = 16,
                 compile_layers: bool | None = None, step: str | None = None):
        if use_cuda_graph is None:
            use_cuda_graph = _env_flag("XRAYGPT_CUDA_GRAPHS", "1") != "0"
        if compile_layers is None:
            compile_layers = _env_flag("XRAYGPT_COMPILE_DECODE", "1") != "0"
        step = step or _env_flag("XRAYGPT_DECODE_STEP", "fused")
        if step not in ("fused", "modules", "hf"):
            raise ValueError(f"XRAYGPT_DECODE_STEP must be fused, modules or hf, got {step!r}")
        self.llm = llm
        self.use_cuda_graph = use_cuda_graph
        self.compile_layers = compile_layers
        self.prompt_len_multiple = prompt_len_multiple
        self.cache_len_multiple = cache_len_multiple
        self.max_runners = max_runners
        self.sync_every = sync_every
        self.stream_every = stream_every
        self.first_tokens_now = first_tokens_now
        self.step_kind = step
        self._kernel = None
        self._lock = threading.Lock()
        self._runners: OrderedDict[tuple, _DecodeRunner] = OrderedDict()
        self.runners_built = 0

    def step_kernel(self, device: torch.device):
        """The decode-step implementation for this LLM (built once, on first use)."""
        if self.step_kind == "hf":
            return None
        if self._kernel is None:
            reason = llama_decode.supported(self.llm)
            if reason:
                log.info("decode step: transformers forward (%s)", reason)
                self.step_kind = "hf"
                return None
            compile_blocks = self.compile_layers and device.type == "cuda"
            self._kernel = llama_decode.LlamaDecodeStep(self.llm, fuse=self.step_kind == "fused",
                                                        compile_blocks=compile_blocks)
        return self._kernel

    def _runner(self, batch: int, needed_len: int, device: torch.device) -> _DecodeRunner:
        use_graph = self.use_cuda_graph and device.type == "cuda"
        fits = [k for k in self._runners if k[0] == batch and k[1] >= needed_len and k[2] == use_graph]
        if fits:
            key = min(fits, key=lambda k: k[1])
            self._runners.move_to_end(key)
            return self._runners[key]
        cache_len = -(-needed_len // self.cache_len_multiple) * self.cache_len_multiple
        while len(self._runners) >= self.max_runners:
            self._runners.popitem(last=False)
        kernel = self.step_kernel(device)
        runner = _DecodeRunner(self.llm, batch, cache_len, use_graph, kernel)
        self._runners[(batch, cache_len, use_graph)] = runner
        self.runners_built += 1
        return runner

    @torch.no_grad()
    def warm_up(self, batch: int, cache_len: int, generation_kwargs: Sequence[dict] = ({},)) -> float:
        """Build the runner for (batch, cache_len) and capture its decode steps for each settings; seconds taken.

        Pay this at load time: afterwards every request of this batch size whose prompt + new tokens fit in
        ``cache_len`` replays captured decode steps from its first token.
        """
        import time

        started = time.perf_counter()
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        with self._lock:
            runner = self._runner(batch, cache_len, device)
            length = self.prompt_len_multiple
            for kwargs in generation_kwargs:
                settings = DecodeSettings.resolve(self.llm, {"max_new_tokens": 2, **kwargs})
                runner.use(settings)
                embeds = torch.randn(batch, length, embed.weight.shape[1], device=device, dtype=embed.weight.dtype)
                mask = torch.ones(batch, length, dtype=torch.long, device=device)
                runner.prefill(embeds * 0.02, mask)
                runner.capture_decode()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    def captures(self) -> int:
        """CUDA graphs captured so far over all runners (0 on CPU)."""
        return sum(g.captures for r in self._runners.values()
                   for g in (*r.decode_graphs.values(), *r.prefill_graphs.values()))

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 stop_strings: Sequence[str] | None = None, tokenizer=None, streamer=None,
                 cancel: threading.Event | None = None, **generation_kwargs) -> torch.Tensor:
        """Return the new token ids [B, n] (n <= max_new_tokens), padded with pad_token_id after a row stops.

        ``stop_strings`` (with ``tokenizer``) end a row once its decoded text contains one of them; the check
        runs on the host every ``sync_every`` steps and cuts the row at the token that completed the string.
        ``streamer`` (batch 1) receives the new tokens like HF's streamers (``put`` / ``end``): the first one
        right after the prompt, then every ``stream_every`` tokens. The host reads results one chunk behind
        the GPU (asynchronous copies), so the GPU never waits for Python. ``cancel`` (an Event) stops early.
        """
        reason = unsupported_reason({**generation_kwargs, "max_new_tokens": generation_kwargs.get("max_new_tokens")})
        if reason:
            raise ValueError(f"fast generation cannot handle this request ({reason}); use the HF generate path")
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to decode the generated tokens")
        if streamer is not None and inputs_embeds.shape[0] != 1:
            raise ValueError("streaming supports batch size 1 only")
        settings = DecodeSettings.resolve(self.llm, generation_kwargs)
        batch, length, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
        # Left-pad prompts to a multiple of prompt_len_multiple: fewer shapes, so captured prefills get reused.
        extra = -length % self.prompt_len_multiple
        if extra:
            inputs_embeds = F.pad(inputs_embeds, (0, 0, extra, 0))
            attention_mask = F.pad(attention_mask, (extra, 0))
            length += extra
        with self._lock:
            runner = self._runner(batch, length + settings.max_new_tokens, inputs_embeds.device)
            runner.use(settings)
            runner.prefill(inputs_embeds, attention_mask)
            steps, cut = self._decode_loop(runner, settings, stop_strings, tokenizer, streamer, cancel)
            if streamer is not None:
                streamer.end()
            ends = torch.minimum(runner.finish_step.cpu() + 1, cut)
            n = int(min(ends.max().item(), steps))
            out = runner.tokens[:, :n].clone()
        late = torch.arange(n, device=out.device)[None, :] >= ends.to(out.device)[:, None]
        return out.masked_fill_(late, settings.pad_token_id)

    def _decode_loop(self, runner: _DecodeRunner, settings: DecodeSettings, stop_strings, tokenizer, streamer,
                     cancel) -> tuple[int, torch.Tensor]:
        """Step until every row stopped; returns (steps run, host-side stop-string cuts)."""
        limit = settings.max_new_tokens
        chunk = self.stream_every if streamer is not None else self.sync_every
        cut = torch.full((runner.batch,), limit, dtype=torch.long)
        pending: deque[_Snapshot] = deque()
        ring = runner.snapshots
        taken, streamed, checked, steps = 0, 0, 0, 1

        def snapshot() -> None:
            nonlocal taken
            pending.append(ring[taken % len(ring)].take(runner, steps))
            taken += 1

        def due() -> bool:
            """Look at the oldest results once a newer chunk is queued behind them; a stream's first tokens at once."""
            if not pending:
                return False
            head = pending[0].steps
            return (len(pending) >= len(ring) - 1 or steps >= limit or head == 1
                    or (streamer is not None and head <= self.first_tokens_now))

        snapshot()
        while True:
            while due():
                snap = pending.popleft().wait()
                s = snap.steps
                if stop_strings:
                    checked = _cut_at_stop_strings(runner, snap.tokens, tokenizer, stop_strings, cut,
                                                   snap.finished, checked, s, limit)
                if streamer is not None:
                    end = min(s, int(snap.finish_step[0]) + 1 if snap.finished[0] else s, int(cut[0]))
                    if end > streamed:
                        streamer.put(snap.tokens[0, streamed:end].clone())
                        streamed = end
                if bool((snap.finished | (cut < limit)).all()) or (cancel is not None and cancel.is_set()):
                    return steps, cut
            if steps >= limit:
                return steps, cut
            runner.step()
            steps += 1
            if steps % chunk == 0 or steps >= limit or (streamer is not None and steps <= self.first_tokens_now):
                snapshot()


def _cut_at_stop_strings(runner: _DecodeRunner, tokens: torch.Tensor, tokenizer, stop_strings: Sequence[str],
                         cut: torch.Tensor, finished: torch.Tensor, checked: int, steps: int, limit: int) -> int:
    """Find, for rows still running, the first token whose prefix text contains a stop string.

    ``tokens`` are host copies; one decode per row tells whether a stop string appeared at all, and only then
    are the prefixes since the last check decoded to find the token that completed it.
    """
    for row in range(tokens.shape[0]):
        if finished[row] or cut[row] < limit:
            continue
        text = tokenizer.decode(tokens[row, :steps], skip_special_tokens=True)
        if not any(stop in text for stop in stop_strings):
            continue
        for end in range(checked + 1, steps + 1):
            text = tokenizer.decode(tokens[row, :end], skip_special_tokens=True)
            if any(stop in text for stop in stop_strings):
                cut[row] = end
                runner.finished[row] = True
                break
    return steps


_GENERATORS: weakref.WeakKeyDictionary[nn.Module, FastGenerator] = weakref.WeakKeyDictionary()


def get_fast_generator(llm: nn.Module, **options) -> FastGenerator:
    """The process-wide decoder of ``llm`` (created on first use), so capture is paid once per process."""
    generator = _GENERATORS.get(llm)
    if generator is None:
        generator = _GENERATORS[llm] = FastGenerator(llm, **options)
    return generator


def fast_generate(llm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  **generation_kwargs) -> torch.Tensor:
    """Drop-in for ``llm.generate(inputs_embeds=..., attention_mask=..., **kwargs)`` for greedy/sampling."""
    return get_fast_generator(llm).generate(inputs_embeds, attention_mask, **generation_kwargs)


def generate(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
             cancel: threading.Event | None = None, **generation_kwargs) -> torch.Tensor:
    """The model's decode seam: fast path on CUDA for what it supports, transformers ``generate`` otherwise.

    ``model`` is the multimodal model (its LLM is ``model.llama_model``) or the LLM itself.
    ``cancel`` (an Event) ends generation early on either path. Returns the new token ids [B, n] either way.
    """
    llm = getattr(model, "llama_model", model)
    reason = unsupported_reason(generation_kwargs)
    if inputs_embeds.device.type == "cuda" and reason is None and not _is_peft(llm):
        return get_fast_generator(llm).generate(inputs_embeds, attention_mask, cancel=cancel, **generation_kwargs)
    if reason and inputs_embeds.device.type == "cuda":
        log.info("fast generation not used: %s", reason)
    return llm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                        **with_cancel_criterion(generation_kwargs, cancel))


class CancelCriterion:
    """A transformers stopping criterion that ends generation once ``event`` is set (abandoned streams)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def with_cancel_criterion(generation_kwargs: dict, cancel: threading.Event | None) -> dict:
    """``generation_kwargs`` for transformers ``generate`` with ``cancel`` added as a stopping criterion."""
    if cancel is None:
        return generation_kwargs
    from transformers import StoppingCriteriaList

    criteria = StoppingCriteriaList(list(generation_kwargs.get("stopping_criteria") or []) + [CancelCriterion(cancel)])
    return {**generation_kwargs, "stopping_criteria": criteria}


def _is_peft(llm: nn.Module) -> bool:
    """LoRA-wrapped LLMs keep HF generate (peft's forward signature differs; not measured here)."""
    return type(llm).__module__.startswith("peft")
