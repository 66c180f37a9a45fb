"""Token sequences of the original prompt format, built per sample and padded into a batch.

One sample (as the original ``MiniGPT4.forward`` builds it, token by token)::

    [BOS] before-ids [image slots x Q] after-ids caption-ids
    before = '###Patient: <Img>'          (tokenized alone, no special tokens)
    after  = '</Img>' + prompt + ' ###Doctor: '   (tokenized alone)
    caption = caption + end_sym, truncated to max_txt_len tokens; the only positions with a loss

Each piece is tokenized on its own, so each gets its own leading '▁', exactly
as the original does.  A study of several images has one ``<Img><ImageHere></Img>`` segment per
image (optionally preceded by its view name, see :func:`wrap_study_prompt`); the text between two
segments is one more piece, and each segment holds Q image slots.  One image without a view name
gives exactly the one-image tokens.  Image slots hold a placeholder id and are replaced by
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


def wrap_study_prompt(
    prompt: str, template: str, num_images: int, views: Optional[Sequence[Optional[str]]] = None,
    view_template: str = "{view}: ",
) -> str:
    """:func:`wrap_prompt` for a study: one image segment per image, each after its view name.

    ``(" Describe.", 2, ["Frontal", "Lateral"])`` ->
    ``'###Patient: Frontal: <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> Describe. ###Doctor: '``.
    A single image with no view is exactly :func:`wrap_prompt`.  A prompt with one
    ``<Img><ImageHere></Img>`` (e.g. the CLI's default) gets the study's segments in its place; a prompt
    with several placeholders must hold one per image.  ``view_template: ""`` leaves the view names out.
    """
    segments = image_segments(num_images, views, view_template)
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found == 0:
        return template.format(segments + prompt)
    if found == 1 and num_images > 1 and IMAGE_TAG in prompt:
        return template.format(prompt.replace(IMAGE_TAG, segments))
    if found != num_images:
        raise ValueError(f"the prompt holds {found} {IMAGE_PLACEHOLDER} for {num_images} images: {prompt!r}")
    return template.format(prompt)


def image_segments(num_images: int, views: Optional[Sequence[Optional[str]]] = None, view_template: str = "{view}: ") -> str:
    """``'Frontal: <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img>'``: the images of a study, in order."""
    views = list(views) if views else [None] * num_images
    if len(views) != num_images:
        raise ValueError(f"{len(views)} view names for {num_images} images")
    return " ".join((view_template.format(view=view) if view and view_template else "") + IMAGE_TAG for view in views)


def split_at_images(prompt: str, num_images: Optional[int] = None) -> List[str]:
    """The text around the ``<ImageHere>`` placeholders (one more piece than images)."""
    parts = prompt.split(IMAGE_PLACEHOLDER)
    expected = 1 if num_images is None else num_images
    if len(parts) - 1 != expected:
        raise ValueError(f"a prompt needs exactly {expected} {IMAGE_PLACEHOLDER}, found {len(parts) - 1} in {prompt!r}")
    return parts


def split_at_image(prompt: str) -> List[str]:
    return split_at_images(prompt, 1)


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


def _context_rows(tokenizer, prompts: Sequence[str], num_image_tokens: int,
                  image_counts: Optional[Sequence[int]] = None):
    """``[BOS] before [slots] after`` for each prompt (BOS added here, once, as the original does);
    a study's prompt is ``[BOS] piece0 [slots] piece1 [slots] ... pieceK``."""
    counts = list(image_counts) if image_counts is not None else [1] * len(prompts)
    if len(counts) != len(prompts):
        raise ValueError(f"{len(counts)} image counts for {len(prompts)} prompts")
    pieces = [split_at_images(p, n) for p, n in zip(prompts, counts)]
    flat = _ids(tokenizer, [piece for parts in pieces for piece in parts])  # one tokenizer call for the batch
    pad_id = tokenizer.pad_token_id
    rows, slots, start = [], [], 0
    for parts in pieces:
        ids = flat[start : start + len(parts)]
        start += len(parts)
        row, slot = [tokenizer.bos_token_id, *ids[0]], [False] * (1 + len(ids[0]))
        for piece in ids[1:]:
            row += [pad_id] * num_image_tokens + piece
            slot += [True] * num_image_tokens + [False] * len(piece)
        rows.append(row)
        slots.append(slot)
    return rows, slots


def build_train_batch(
    tokenizer,
    prompts: Sequence[str],
    captions: Sequence[str],
    num_image_tokens: int,
    end_sym: str,
    max_txt_len: int,
    image_counts: Optional[Sequence[int]] = None,
) -> TokenBatch:
    """Right-padded training batch; ``prompts`` are full template strings with one ``<ImageHere>`` per image."""
    if len(prompts) != len(captions):
        raise ValueError(f"{len(prompts)} prompts but {len(captions)} captions")
    rows, slots = _context_rows(tokenizer, prompts, num_image_tokens, image_counts)
    caption_ids = [ids[:max_txt_len] for ids in _ids(tokenizer, [c + end_sym for c in captions])]
    pad_id = tokenizer.pad_token_id
    targets = []
    for i, ids in enumerate(caption_ids):
        # The original masks every caption token equal to pad (= eos) as if it were padding.
        targets.append([IGNORE_INDEX] * len(rows[i]) + [t if t != pad_id else IGNORE_INDEX for t in ids])
        rows[i] = rows[i] + ids
        slots[i] = slots[i] + [False] * len(ids)
    return _pad(rows, slots, targets, pad_id, left=False)


def build_generation_batch(tokenizer, prompts: Sequence[str], num_image_tokens: int,
                           image_counts: Optional[Sequence[int]] = None) -> TokenBatch:
    """Left-padded generation context, so every sample's next token is predicted at the last column."""
    rows, slots = _context_rows(tokenizer, prompts, num_image_tokens, image_counts)
    return _pad(rows, slots, None, tokenizer.pad_token_id, left=True)
