"""Decoding helpers: turning generated ids into clean answers, and streaming text safely."""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator, List

import torch


def trim_generated(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Cut one row of new tokens at the first EOS (finished rows are padded with EOS)."""
    stop = (ids == eos_id).nonzero()
    return ids[: int(stop[0])] if len(stop) else ids


def clean_answer(text: str, end_sym: str) -> str:
    """The original's post-processing: keep text before ``end_sym`` and after a repeated ``Doctor:``."""
    if end_sym:
        text = text.split(end_sym)[0]
    return text.split("Doctor:")[-1].strip()


def strip_leading_special(ids: torch.Tensor, unk_id: int | None, bos_id: int | None) -> torch.Tensor:
    """Drop a leading <unk> then a leading <s>, which some checkpoints emit first (as the original does)."""
    for special in (unk_id, bos_id):
        if special is not None and len(ids) and int(ids[0]) == special:
            ids = ids[1:]
    return ids


def stream_until(pieces: Iterable[str], end_sym: str) -> Iterator[str]:
    """Yield text as it arrives, never showing ``end_sym`` or anything after it.

    Text that could be the start of ``end_sym`` is held back until the next piece decides.
    """
    buffer = ""
    for piece in pieces:
        buffer += piece
        if end_sym and end_sym in buffer:
            head = buffer.split(end_sym)[0].rstrip()
            if head:
                yield head
            return
        keep = _longest_prefix_suffix(buffer, end_sym)
        ready, buffer = buffer[: len(buffer) - keep], buffer[len(buffer) - keep:]
        if ready:
            yield ready
    if buffer:
        yield buffer


def _longest_prefix_suffix(text: str, symbol: str) -> int:
    for size in range(min(len(text), len(symbol) - 1), 0, -1):
        if symbol.startswith(text[-size:]):
            return size
    return 0


def run_in_thread(target: Callable[[], object], pieces: Iterable[str]) -> Iterator[str]:
    """Run ``target`` (which feeds ``pieces``) in a thread; re-raise its error in the consumer."""
    errors: List[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # surfaced below, in the caller's thread
            errors.append(exc)
            end = getattr(pieces, "end", None)
            if end is not None:
                end()

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    yield from pieces
    thread.join()
    if errors:
        raise errors[0]

