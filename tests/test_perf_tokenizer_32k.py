"""The benchmark tokenizer: a LLaMA-style SentencePiece model of exactly 32,000 pieces (byte fallback, split digits)."""
from __future__ import annotations

import importlib.util

from xraygpt.models.llm import load_tokenizer


def _script(repo_root):
    spec = importlib.util.spec_from_file_location("make_tokenizer_32k", repo_root / "benchmarks" / "make_tokenizer_32k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trains_exactly_32000_llama_style_pieces(tmp_path, repo_root):
    script = _script(repo_root)
    assert script.main(["--out", str(tmp_path), "--lines", "3000"]) == 0
    tokenizer = load_tokenizer(tmp_path)
    assert len(tokenizer) == 32000
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "###Patient: <Img><ImageHere></Img> Is there an effusion? ###Doctor: 12.5 cm, ü"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte fallback: nothing is lost
    assert tokenizer.convert_ids_to_tokens(tokenizer("7", add_special_tokens=False)["input_ids"])[-1] == "7"  # digits split
    assert not (tmp_path / "corpus.txt").exists()
