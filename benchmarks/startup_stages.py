"""Demo start-up split by stage, from process start to ready, then two streamed chat turns (issue 11, run D).

    python3 benchmarks/startup_stages.py run --cfg-path eval_configs/xraygpt_eval.yaml --device cuda:0 \
        --options model.vit_path=... model.q_former_model=... model.llama_model=... model.ckpt=...
    python3 benchmarks/startup_stages.py convert --weights W --out W_st   # safetensors copies of W's files

``run`` times ``xraygpt.demo.load_chat`` (everything ``demo.py`` does before ``launch``) with each loading stage
wrapped: imports, EVA build + load, BLIP-2 load, tokenizer, LLM ``from_pretrained``, checkpoint, warm-up. Set
``TORCHINDUCTOR_CACHE_DIR`` to an empty folder for a cold compile cache. ``convert`` writes what a user converts
once: the Vicuna folder through transformers' ``save_pretrained`` and the EVA / BLIP-2 ``.pth`` files through
``safetensors.torch.save_file`` (point the same config keys at the new files).
"""
from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMAGE = REPO / "tests" / "fixtures" / "seed_reference" / "images" / "xray_0.png"
QUESTIONS = ["Describe the given chest x-ray image in detail.", "Is there any sign of pleural effusion?"]


def convert(weights: Path, out: Path) -> None:
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from xraygpt.models.checkpoint_io import read_state_dict

    out.mkdir(parents=True, exist_ok=True)
    for name in ("eva_vit_g.pth", "blip2_pretrained_flant5xxl.pth"):  # model.ckpt (12 MB) stays .pth
        start = time.time()
        state = {k: v.contiguous() for k, v in read_state_dict(weights / name, name).items()}
        save_file(state, str(out / Path(name).with_suffix(".safetensors").name))
        print(f"{name}: {len(state)} tensors, {time.time() - start:.1f} s", flush=True)
    start = time.time()
    llm = weights / "Vicuna_Radiology_fp16"
    AutoModelForCausalLM.from_pretrained(str(llm), dtype="auto", local_files_only=True).save_pretrained(
        str(out / llm.name))
    for extra in llm.iterdir():
        if extra.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(extra, out / llm.name / extra.name)
    print(f"{llm.name}: {time.time() - start:.1f} s", flush=True)


def run(argv: list[str]) -> None:
    stages: dict[str, float] = {}

    def timed(owner, name: str, label: str, is_class: bool = False) -> None:
        raw = getattr(owner, name).__func__ if is_class else getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.time()
            try:
                return raw(*args, **kwargs)
            finally:
                stages[label] = stages.get(label, 0.0) + time.time() - start

        setattr(owner, name, classmethod(wrapper) if is_class else wrapper)

    import torch

    from xraygpt import demo
    from xraygpt.common.cli import setup_logging
    from xraygpt.common.decoding_settings import CHAT_DEFAULTS
    from xraygpt.models import mini_gpt4, vision_encoders

    setup_logging()
    stages["imports"] = time.time() - T0
    timed(vision_encoders.EvaViTG, "build", "eva_build_and_load", is_class=True)
    timed(mini_gpt4.MiniGPT4, "load_blip2", "blip2_load")
    timed(mini_gpt4, "load_language_model", "llm_from_pretrained")
    timed(mini_gpt4, "load_tokenizer", "tokenizer")
    timed(mini_gpt4.MiniGPT4, "load_checkpoint", "ckpt")
    timed(mini_gpt4.MiniGPT4, "warm_up", "warm_up")
    chat = demo.load_chat(demo.build_parser().parse_args(argv))
    ready = time.time() - T0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(f"READY {ready:.1f} s  peak {peak:.2f} GiB  " + " ".join(f"{k}={v:.1f}" for k, v in stages.items()),
          flush=True)
    state = chat.new_state()
    chat.upload_img(str(IMAGE), state)
    settings = dataclasses.replace(CHAT_DEFAULTS, max_new_tokens=200)  # the UI's sampling, 200-token turns
    for question in QUESTIONS:
        chat.ask(question, state)
        start, first = time.perf_counter(), None
        for _ in chat.stream_answer(state, settings):
            if first is None:
                first = time.perf_counter() - start
        print(f"TURN first piece {1e3 * (first or 0):.1f} ms, total {time.perf_counter() - start:.2f} s", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "convert":
        parser = argparse.ArgumentParser(description="safetensors copies of the real-size weights")
        parser.add_argument("--weights", type=Path, required=True)
        parser.add_argument("--out", type=Path, required=True)
        args = parser.parse_args(sys.argv[2:])
        convert(args.weights, args.out)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        run(sys.argv[2:])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
