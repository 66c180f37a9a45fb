"""Train a LLaMA-style 32,000-piece SentencePiece tokenizer on generated report-like text (CPU, ~1 min).

Why: real-size runs need the real vocabulary size and piece statistics, so that decoding, streaming and
stop-string checks cost what they cost with Vicuna's tokenizer. No tokenizer can be downloaded here, so one is
trained: BPE with byte fallback and digit splitting like LLaMA's, ids 0/1/2 = <unk>/<s>/</s>, exactly 32,000
pieces (the default 120,000 lines teach all of them; from shorter text ``user_defined_symbols`` fillers pad the
vocabulary, which makes training take minutes).

    python benchmarks/make_tokenizer_32k.py --out weights/tokenizer_32k   # tokenizer.model + HF config files
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

VOCAB = 32000

FINDINGS = ["The lungs are clear", "There is no pleural effusion", "No pneumothorax is seen",
            "The cardiomediastinal silhouette is within normal limits", "Mild cardiomegaly is present",
            "There is a small left pleural effusion", "Patchy opacity in the right lower lobe",
            "Degenerative changes of the thoracic spine", "Calcified granuloma in the left upper lobe",
            "Interval placement of a right internal jugular central venous catheter",
            "Bibasilar atelectasis", "Hyperinflated lungs consistent with emphysema",
            "No focal consolidation", "Stable appearance of sternotomy wires",
            "Pulmonary vascular congestion without frank edema"]
MODIFIERS = ["", "mild", "moderate", "severe", "subtle", "stable", "new", "increased", "decreased", "unchanged"]
SITES = ["right", "left", "bilateral", "upper lobe", "lower lobe", "lingula", "apex", "base", "hilum", "costophrenic angle"]
QUESTIONS = ["Describe the given chest x-ray image in detail.", "What are the key findings?",
             "Is there any sign of pleural effusion?", "Is the overall impression normal or abnormal?",
             "Compare with the prior study.", "Where is the opacity located?"]


def sentences(count: int, seed: int) -> list[str]:
    """Report-like lines with numbers, punctuation and the prompt template, so BPE learns useful pieces."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        parts = [rng.choice(FINDINGS)]
        for _ in range(rng.randint(0, 3)):
            parts.append(f"{rng.choice(MODIFIERS)} {rng.choice(FINDINGS).lower()} at the {rng.choice(SITES)}".strip())
        text = ". ".join(parts) + "."
        if rng.random() < 0.3:
            text = f"###Patient: <Img><ImageHere></Img> {rng.choice(QUESTIONS)} ###Doctor: {text}"
        if rng.random() < 0.2:
            text += f" Measures {rng.randint(1, 99)}.{rng.randint(0, 9)} cm on image {rng.randint(1, 300)}."
        # Random letter runs give the trainer enough distinct words to learn TRAINED pieces.
        text += " " + " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                               for _ in range(rng.randint(1, 4)))
        lines.append(text)
    return lines


def main(argv: list[str] | None = None) -> int:
    import sentencepiece as spm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for tokenizer.model and the HF config files")
    parser.add_argument("--lines", type=int, default=120000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "corpus.txt"
    corpus.write_text("\n".join(sentences(args.lines, args.seed)) + "\n", encoding="utf-8")
    # First pass: as many pieces as the text supports (up to VOCAB); second pass: the same, padded with
    # user-defined fillers to exactly VOCAB (unk/bos/eos + 256 byte pieces + learned + fillers).
    common = dict(input=str(corpus), model_prefix=str(args.out / "tokenizer"), model_type="bpe",
                  byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                  character_coverage=1.0, num_threads=2, minloglevel=2, add_dummy_prefix=True,
                  remove_extra_whitespaces=False, input_sentence_size=args.lines, shuffle_input_sentence=True)
    spm.SentencePieceTrainer.train(vocab_size=VOCAB, hard_vocab_limit=False, **common)
    learned = spm.SentencePieceProcessor(model_file=str(args.out / "tokenizer.model")).get_piece_size()
    if learned < VOCAB:
        fillers = [f"<filler_{i}>" for i in range(VOCAB - learned)]
        spm.SentencePieceTrainer.train(vocab_size=VOCAB, hard_vocab_limit=True, user_defined_symbols=fillers, **common)
    corpus.unlink()
    (args.out / "tokenizer.vocab").unlink(missing_ok=True)
    processor = spm.SentencePieceProcessor(model_file=str(args.out / "tokenizer.model"))
    if processor.get_piece_size() != VOCAB:
        raise SystemExit(f"trained {processor.get_piece_size()} pieces, wanted {VOCAB}")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (args.out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (args.out / "tokenizer_config.json").write_text(json.dumps({
        **special, "add_bos_token": True, "add_eos_token": False, "legacy": True, "pad_token": None,
        "clean_up_tokenization_spaces": False, "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {},
    }, indent=1))
    print(f"{args.out / 'tokenizer.model'}: {processor.get_piece_size()} pieces ({learned} learned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
