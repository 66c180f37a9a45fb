"""The seed reference on a CUDA device (skipped where there is none, e.g. CI)."""
import json

import pytest
import torch

from xraygpt.common.config import Config
from xraygpt.common.registry import registry


@pytest.mark.gpu
def test_seed_reference_on_cuda_fp32(repo_root, seed_reference_dir, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    model = registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg).to("cuda").eval()
    expected = torch.load(seed_reference_dir / "expected.pt", weights_only=True)
    images = torch.load(seed_reference_dir / "inputs.pt", weights_only=True)["images"].cuda()
    samples = json.loads((seed_reference_dir / "samples.json").read_text())["samples"]
    with torch.no_grad():
        inputs_llama, _ = model.encode_img(images)
        assert (inputs_llama.cpu() - expected["inputs_llama"]).abs().max() <= 1e-4
        batch = {
            "image": images[[s["image_index"] for s in samples]],
            "prompt": [s["prompt"] for s in samples],
            "caption": [s["caption"] for s in samples],
        }
        counts = torch.tensor([len(s["caption_ids"]) for s in samples], dtype=torch.float)
        weighted = (expected["losses"] * counts).sum() / counts.sum()
        assert abs(model(batch)["loss"].item() - weighted.item()) <= 1e-4
    _, ids = model.generate(images[:1], [" Describe the given chest x-ray image in detail."], max_new_tokens=16, stop_strings=[], return_ids=True)
    assert ids[0].tolist() == expected["greedy_tokens"].tolist()
