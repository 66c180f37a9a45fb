"""The request merger: one worker thread decodes every running request together.

Scheduling (iteration-level, "continuous" batching): between two decode steps the
worker admits waiting requests into the running batch. A waiting request is admitted
as soon as ``max_wait_ms`` has passed since it arrived, or as soon as enough requests
wait to fill the free rows, so companions that arrive within the window share one
prefill; a running batch never holds a newcomer back longer than the window (plus the
step in progress). Rows leave when they finish, when their client disconnects
(``cancel``) or on an error. Events go back to the caller through ``on_event``,
called from the worker thread.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import torch

from xraygpt.common.errors import XrayGPTError
from xraygpt.serve.answer_text import AnswerText
from xraygpt.serve.decode_batch import DecodeBatch
from xraygpt.serve.slot_batch import slot_batch_for

logger = logging.getLogger(__name__)


class QueueFullError(XrayGPTError):
    """Too many requests are waiting; the client should retry later."""


@dataclass
class GenerationRequest:
    """One chat completion as the model sees it."""

    prompt: str
    """The full context, one ``<ImageHere>`` per image (the conversation template already applied)."""
    pixels: List[torch.Tensor]
    """Processed images ``[3, H, W]``, in prompt order."""
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stops: Sequence[str] = ()
    ignore_eos: bool = False
    """Decode exactly ``max_new_tokens`` tokens, past EOS and stop strings (benchmarks)."""
    grammar: Any = None
    """Constrained decoding: an object with ``mask_(logits_row)`` (disallowed tokens to -inf, in place) and
    ``accept(token)``, e.g. ``serve.structured.RowGrammar``; stop strings are not applied to such a row."""
    on_event: Callable[[str, Dict[str, Any]], None] = lambda kind, data: None
    """``("delta", {"text"})``, ``("done", {"text", "finish_reason", "completion_tokens", "prompt_tokens"})``
    or ``("error", {"message"})``; called from the worker thread."""
    request_id: str = ""
    arrived: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Row:
    def __init__(self, request: GenerationRequest, tokenizer, prompt_tokens: int, device: torch.device):
        self.request = request
        self.answer = AnswerText(tokenizer, () if request.ignore_eos or request.grammar is not None else request.stops)
        self.prompt_tokens = prompt_tokens
        self.generator: Optional[torch.Generator] = None
        if request.temperature > 0:
            self.generator = torch.Generator(device=device)
            if request.seed is not None:
                self.generator.manual_seed(request.seed)
            else:
                self.generator.seed()

    def finish(self, reason: str) -> None:
        piece = self.answer.flush()
        if piece:
            self.request.on_event("delta", {"text": piece})
        self.request.on_event("done", {
            "text": self.answer.final(), "finish_reason": reason,
            "completion_tokens": len(self.answer.ids), "prompt_tokens": self.prompt_tokens,
        })


def _choose(logits: torch.Tensor, rows: Sequence[_Row]) -> torch.Tensor:
    """Greedy (argmax) rows at once; sampled rows one by one, each with its own seeded generator.

    A constrained row's logits are masked by its grammar first (before temperature / top-p).
    """
    for i, row in enumerate(rows):
        if row.request.grammar is not None:
            row.request.grammar.mask_(logits[i])
    tokens = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        if row.generator is None:
            continue
        scores = logits[i] / row.request.temperature
        if row.request.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            mass_before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)
            ordered[mass_before >= row.request.top_p] = float("-inf")
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, ordered)
        tokens[i] = torch.multinomial(scores.softmax(-1), 1, generator=row.generator)[0]
    return tokens


class ContinuousBatcher:
    """Owns the model's decoding: ``submit`` from any thread, answers come back as events."""

    def __init__(self, model: Any, max_batch_size: int = 16, max_wait_ms: float = 10.0, max_queue: int = 64):
        self.model = model
        self.tokenizer = model.tokenizer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batch: Any = None  # built by the worker: SlotDecodeBatch (captured steps) or DecodeBatch
        self.rows: List[_Row] = []
        self.next_tokens: Optional[torch.Tensor] = None
        self.waiting: Deque[GenerationRequest] = collections.deque()
        self.wakeup = threading.Condition()
        self.stats = collections.Counter()
        """``prefill_batches`` (batched prefill calls), ``decode_steps``, ``rows_decoded`` (sum of rows over steps),
        ``max_rows``, ``admitted``, ``finished``, ``cancelled``, ``failed``."""
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    # ------------------------------------------------------------------ API
    def start(self) -> "ContinuousBatcher":
        """Start the worker thread (once; later calls do nothing)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="xraygpt-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.wakeup:
            self._stopping = True
            self.wakeup.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest) -> None:
        with self.wakeup:
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are already waiting (--max-queue {self.max_queue})")
            self.waiting.append(request)
            self.wakeup.notify_all()

    def load(self) -> Dict[str, int]:
        with self.wakeup:
            return {"running": len(self.rows), "waiting": len(self.waiting)}

    # --------------------------------------------------------------- worker
    def _build_batch(self) -> None:
        """The decoding engine, warmed up before the first request is admitted (requests queue meanwhile)."""
        self.batch = slot_batch_for(self.model, self.max_batch_size)
        if self.batch is None:
            self.batch = DecodeBatch(self.model.llama_model)
            return
        self.max_batch_size = min(self.max_batch_size, self.batch.slots)  # the GPU may hold fewer slots
        seconds = self.batch.warm_up()
        logger.info("decode steps ready: %d slots x %d-token window, %d rows buckets x %d attention spans, "
                    "%d CUDA graphs, %.1f s", self.batch.slots, self.batch.window, len(self.batch.buckets),
                    len(self.batch.spans), self.batch.captures(), seconds)

    def _run(self) -> None:
        try:
            self._build_batch()
        except Exception:  # noqa: BLE001 - the server stays up and answers with the transformers forward
            logger.exception("building the captured decode steps failed; decoding with the transformers forward")
            self.batch = DecodeBatch(self.model.llama_model)
        while True:
            admitted = self._admissions()
            if admitted is None:
                return
            if admitted:
                self._guarded(self._prefill, admitted)
            if self.rows:
                self._guarded(self._step, None)

    def _admissions(self) -> Optional[List[GenerationRequest]]:
        """Requests to admit now (maybe none); blocks only while nothing is running. ``None`` = shut down."""
        with self.wakeup:
            while True:
                if self._stopping:
                    return None
                self._drop_cancelled_waiting()
                free = self.max_batch_size - len(self.rows)
                if self.waiting and free > 0:
                    waited = time.monotonic() - self.waiting[0].arrived
                    if waited >= self.max_wait or len(self.waiting) >= free:
                        return [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
                    if self.rows:
                        return []
                    self.wakeup.wait(timeout=self.max_wait - waited)
                elif self.rows:
                    return []
                else:
                    self.wakeup.wait(timeout=1.0)

    def _drop_cancelled_waiting(self) -> None:
        kept = [r for r in self.waiting if not r.cancelled.is_set()]
        self.stats["cancelled"] += len(self.waiting) - len(kept)
        self.waiting = collections.deque(kept)

    def _guarded(self, work: Callable, arg: Any) -> None:
        try:
            work(arg) if arg is not None else work()
        except Exception as exc:  # noqa: BLE001 - every running row gets the error; the worker lives on
            logger.exception("decoding failed; %d running request(s) get an error", len(self.rows) + len(arg or []))
            message = exc.one_line() if isinstance(exc, XrayGPTError) else "generation failed (see the server log)"
            for row in self.rows:
                row.request.on_event("error", {"message": message})
            for request in arg or []:
                if not any(row.request is request for row in self.rows):
                    request.on_event("error", {"message": message})
            self.stats["failed"] += len(self.rows)
            self.rows, self.next_tokens = [], None
            self.batch.reset()

    @torch.inference_mode()
    def _prefill(self, requests: List[GenerationRequest]) -> None:
        model = self.model
        # Multi-image hook: each request's images are encoded together; the model splices them at its <ImageHere>s.
        pixels = torch.stack([p for r in requests for p in r.pixels]).to(model.device)
        features = model.encode_qformer(pixels)
        embeds, mask = model.prepare_generation_inputs(
            None, [r.prompt for r in requests], image_features=features, apply_template=False,
            image_counts=[len(r.pixels) for r in requests],
        )
        logits = self.batch.prefill(embeds, mask)
        lengths = mask.sum(-1).tolist()
        new_rows = [_Row(r, self.tokenizer, int(n), logits.device) for r, n in zip(requests, lengths)]
        self.rows.extend(new_rows)
        tokens = _choose(logits, new_rows)
        self.next_tokens = tokens if self.next_tokens is None else torch.cat([self.next_tokens, tokens])
        self.stats["prefill_batches"] += 1
        self.stats["admitted"] += len(requests)
        self._advance(list(range(len(self.rows) - len(new_rows), len(self.rows))), tokens)

    @torch.inference_mode()
    def _step(self) -> None:
        logits = self.batch.step(self.next_tokens)
        self.next_tokens = _choose(logits, self.rows)
        self.stats["decode_steps"] += 1
        self.stats["rows_decoded"] += len(self.rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self.rows))
        self._advance(list(range(len(self.rows))), self.next_tokens)

    def _advance(self, indices: List[int], tokens: torch.Tensor) -> None:
        """Give each row in ``indices`` its new token; then drop finished and cancelled rows."""
        eos = self.tokenizer.eos_token_id
        for index, token in zip(indices, tokens.tolist()):
            row = self.rows[index]
            if row.request.cancelled.is_set():
                continue
            if row.request.grammar is not None:
                try:
                    row.request.grammar.accept(token)
                except Exception:  # noqa: BLE001 - this row's grammar failed: only this row ends, with an error
                    logger.exception("constrained decoding failed for request %s", row.request.request_id)
                    row.request.on_event("error", {"message": "constrained decoding failed (see the server log)"})
                    row.request.cancel()
                    continue
            if token == eos and not row.request.ignore_eos:
                row.answer.ids.append(token)
                row.finish("stop")
                continue
            piece = row.answer.add(token)
            if piece:
                row.request.on_event("delta", {"text": piece})
            if row.answer.stopped:
                row.finish("stop")
            elif len(row.answer.ids) >= row.request.max_new_tokens:
                row.finish("length")
        keep = []
        for index, row in enumerate(self.rows):
            done = row.answer.stopped or len(row.answer.ids) >= row.request.max_new_tokens or (
                row.answer.ids[-1:] == [eos] and not row.request.ignore_eos)
            if done:  # first: a client may close right after its last event, before this loop
                self.stats["finished"] += 1
            elif row.request.cancelled.is_set():
                self.stats["cancelled"] += 1
            else:
                keep.append(index)
        if len(keep) != len(self.rows):
            with self.wakeup:
                self.rows = [self.rows[i] for i in keep]
            self.next_tokens = self.next_tokens[keep] if keep else None
            self.batch.keep(keep)
