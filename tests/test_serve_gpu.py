"""The request merger on CUDA (no HTTP: the GPU machine may lack fastapi): answers equal ``model.generate``'s there too."""
from __future__ import annotations

import threading

import pytest
import torch

from xraygpt.common.config import Config
from xraygpt.conversation.loading import load_model_and_processor
from xraygpt.datasets.image_io import load_medical_image
from xraygpt.serve.batcher import ContinuousBatcher, GenerationRequest


def batched_and_single(repo_root, images, device: str, max_new_tokens: int = 24):
    """(answers through the batcher, answers of ``model.generate`` one by one) for a few prompts."""
    from xraygpt.common.registry import registry
    from xraygpt.conversation.templates import IMAGE_TAG

    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    model, processor = load_model_and_processor(cfg, torch.device(device))
    tpl = registry.get_conversation_template("default")
    cases = [(images[i % len(images)], f"Question {i}: findings?") for i in range(6)]
    prompts = [tpl.render([(tpl.roles[0], f"{IMAGE_TAG} {q}"), (tpl.roles[1], None)]) for _, q in cases]
    pixels = [processor(load_medical_image(path)) for path, _ in cases]
    with torch.inference_mode():
        single = [model.generate(px[None].to(device), [pr], apply_template=False, max_new_tokens=max_new_tokens)[0]
                  for px, pr in zip(pixels, prompts)]
    batcher = ContinuousBatcher(model, max_batch_size=4, max_wait_ms=50).start()
    answers, all_done = {}, threading.Event()

    def collector(index):
        def on_event(kind, data):  # runs on the worker thread: must not block
            if kind in ("done", "error"):
                answers[index] = data.get("text", data.get("message"))
                if len(answers) == len(cases):
                    all_done.set()
        return on_event

    try:
        for i, (px, pr) in enumerate(zip(pixels, prompts)):
            batcher.submit(GenerationRequest(prompt=pr, pixels=[px], max_new_tokens=max_new_tokens,
                                             stops=("###",), on_event=collector(i)))
        all_done.wait(timeout=300)
    finally:
        batcher.stop()
    return [answers[i] for i in range(len(cases))], single, dict(batcher.stats)


@pytest.mark.gpu
def test_batcher_on_cuda_equals_generate(repo_root, seed_reference_dir):
    images = sorted((seed_reference_dir / "images").glob("*.png"))
    batched, single, stats = batched_and_single(repo_root, images, "cuda")
    assert batched == single
    assert stats["prefill_batches"] < 6 and stats["max_rows"] > 1
