"""Token sequences of the original prompt format, built per sample and padded into a batch.

One sample (as the original ``MiniGPT4.forward`` builds it, token by token)::

    [BOS] before-ids [image slots x Q] after-ids caption-ids
    before = '###Patient: <Img>'          (tokenized alone, no special tokens)
    after  = '</Img>' + prompt + ' ###Doctor: '   (tokenized alone)
    caption = caption + end_sym, truncated to max_txt_len tokens; the only positions with a loss

Each piece is tokenized on its own, so each gets its own leading '▁', exactly
as the original does.  Image slots hold a placeholder id and are replaced by
the projected image embeddings (``image_mask``).  Training pads on the right,
generation on the left; padded positions have attention 0 and label -100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from xraygpt.common.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TAG



def wrap_prompt(prompt: str, template: str) -> str:
    """Fill the conversation template; a prompt without ``<ImageHere>`` follows the image directly.

    ``' What are the findings?'`` -> ``'###Patient: <Img><ImageHere></Img> What are the findings? ###Doctor: '``.
    Prompt-file lines already carry ``<Img><ImageHere></Img>`` and are used as they are.
    """
    body = prompt if IMAGE_PLACEHOLDER in prompt else IMAGE_TAG + prompt
    return template.format(body)


def split_at_image(prompt: str) -> List[str]:
    parts = prompt.split(IMAGE_PLACEHOLDER)
    if len(parts) != 2:
        raise ValueError(f"a prompt needs exactly one {IMAGE_PLACEHOLDER}, found {len(parts) - 1} in {prompt!r}")
    return parts


def read_prompt_file(path: str, template: str) -> List[str]:
    """Full prompts from a file, one per line (the original's prompt_list).

    Lines in the original form ``<Img><ImageHere></Img> Describe ...`` are used as they are;
    plain instruction lines get the image tag and one space in front.  Blank and ``#`` lines are skipped.
    """
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle.read().splitlines()]
    prompts = [
        wrap_prompt(line if IMAGE_PLACEHOLDER in line else " " + line, template)
        for line in lines
        if line and not line.startswith("#")
    ]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, T] long; image slots and padding hold pad_id
    image_mask: torch.Tensor  # [B, T] bool; True where an image embedding goes
    attention_mask: torch.Tensor  # [B, T] long
    labels: Optional[torch.Tensor] = None  # [B, T] long, IGNORE_INDEX except on caption tokens

    @property
    def num_target_tokens(self) -> int:
        return 0 if self.labels is None else int((self.labels != IGNORE_INDEX).sum())


def _ids(tokenizer, texts: Sequence[str]) -> List[List[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def _pad(
    rows: Sequence[List[int]],
    slots: Sequence[List[bool]],
    targets: Optional[Sequence[List[int]]],
    pad_id: int,
    left: bool,
) -> TokenBatch:
    length = max(len(r) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    image_mask = torch.zeros((batch, length), dtype=torch.bool)
    attention = torch.zeros((batch, length), dtype=torch.long)
    labels = None if targets is None else torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        image_mask[i, span] = torch.tensor(slots[i], dtype=torch.bool)
        attention[i, span] = 1
        if labels is not None:
            labels[i, span] = torch.tensor(targets[i], dtype=torch.long)
    return TokenBatch(input_ids, image_mask, attention, labels)


def _context_rows(tokenizer, prompts: Sequence[str], num_image_tokens: int):
    """``[BOS] before [slots] after`` for each prompt (BOS added here, once, as the original does)."""
    halves = [split_at_image(p) for p in prompts]
    befores = _ids(tokenizer, [h[0] for h in halves])
    afters = _ids(tokenizer, [h[1] for h in halves])
    pad_id = tokenizer.pad_token_id
    rows, slots = [], []
    for before, after in zip(befores, afters):
        rows.append([tokenizer.bos_token_id, *before, *([pad_id] * num_image_tokens), *after])
        slots.append([False] * (1 + len(before)) + [True] * num_image_tokens + [False] * len(after))
    return rows, slots


def build_train_batch(
    tokenizer,
    prompts: Sequence[str],
    captions: Sequence[str],
    num_image_tokens: int,
    end_sym: str,
    max_txt_len: int,
) -> TokenBatch:
    """Right-padded training batch; ``prompts`` are full template strings with one ``<ImageHere>``."""
    if len(prompts) != len(captions):
        raise ValueError(f"{len(prompts)} prompts but {len(captions)} captions")
    rows, slots = _context_rows(tokenizer, prompts, num_image_tokens)
    caption_ids = [ids[:max_txt_len] for ids in _ids(tokenizer, [c + end_sym for c in captions])]
    pad_id = tokenizer.pad_token_id
    targets = []
    for i, ids in enumerate(caption_ids):
        # The original masks every caption token equal to pad (= eos) as if it were padding.
        targets.append([IGNORE_INDEX] * len(rows[i]) + [t if t != pad_id else IGNORE_INDEX for t in ids])
        rows[i] = rows[i] + ids
        slots[i] = slots[i] + [False] * len(ids)
    return _pad(rows, slots, targets, pad_id, left=False)


def build_generation_batch(tokenizer, prompts: Sequence[str], num_image_tokens: int) -> TokenBatch:
    """Left-padded generation context, so every sample's next token is predicted at the last column."""
    rows, slots = _context_rows(tokenizer, prompts, num_image_tokens)
    return _pad(rows, slots, None, tokenizer.pad_token_id, left=True)
