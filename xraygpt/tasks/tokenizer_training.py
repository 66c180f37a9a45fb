"""Train a small LLaMA-style SentencePiece tokenizer on a dataset's reports.

A tiny random-init LLM needs a tiny vocabulary fitted to its text; this
writes a ``.model`` file that ``model.tokenizer`` can point to.  Ids follow
LLaMA (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2); the prompt markers (``###``,
``<Img>``, ``</Img>``) are whole pieces, and unseen characters fall back to
bytes instead of ``<unk>``.

    python -m xraygpt.tasks.tokenizer_training data/phantoms/filter_cap.json --out data/phantoms/tokenizer.model
"""
from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Iterable, List, Sequence

from xraygpt.common.cli import add_debug_argument, run_cli
from xraygpt.common.fileio import atomic_write_bytes

PROMPT_PIECES = ("###", "<Img>", "</Img>", "<ImageHere>")


def texts_from_annotations(paths: Sequence[str | Path]) -> List[str]:
    """Captions and prompts of ``filter_cap.json``-style files (a list, or ``{"annotations": [...]}``)."""
    texts: List[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path} (expected a filter_cap.json)")
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data.get("annotations", []) if isinstance(data, dict) else data
        for item in items:
            for key in ("caption", "prompt", "answer", "question"):
                value = item.get(key) if isinstance(item, dict) else None
                if isinstance(value, str) and value.strip():
                    texts.append(value.strip())
    if not texts:
        raise ValueError(f"no captions or prompts found in {[str(p) for p in paths]}")
    return texts


def train_sentencepiece(texts: Iterable[str], out_path: str | Path, vocab_size: int = 1000,
                        extra_texts: Sequence[str] = ("###Patient: ###Doctor: ",), phrases: bool = False) -> Path:
    """Fit a BPE SentencePiece model on ``texts``; write it atomically to ``out_path`` (a ``.model`` file).

    ``phrases`` lets pieces span words ("▁No▁pleural▁effusion"): on templated text such as the
    phantom reports that shortens sequences about threefold, which is most of a tiny CPU model's cost.
    """
    import sentencepiece as spm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*texts, *extra_texts]),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=list(PROMPT_PIECES),
        split_digits=True,
        split_by_whitespace=not phrases,
        max_sentencepiece_length=48 if phrases else 16,
        hard_vocab_limit=False,
        num_threads=max(os.cpu_count() or 1, 1),
        minloglevel=2,
    )
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a SentencePiece tokenizer on dataset reports.")
    parser.add_argument("annotations", nargs="+", help="filter_cap.json file(s) whose captions and prompts to fit")
    parser.add_argument("--out", required=True, help="output .model file")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--phrases", action="store_true", help="allow pieces that span several words")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    path = train_sentencepiece(texts_from_annotations(args.annotations), args.out, args.vocab_size,
                               phrases=args.phrases)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
