"""Constrained decoding under the report schema (xgrammar) with the tiny seed-reference model."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from xraygpt.common.config import Config
from xraygpt.conversation import loading
from xraygpt.structured import StructuredReportError, extract_report, generate_structured, schema_errors
from xraygpt.structured.constrained import content_json, decode_constrained


PROMPT = " Report as JSON."
GENERATOR = {"mode": "constrained", "model": "tiny", "checkpoint_sha256": None, "settings": {}}
# What the fine-tuned model is taught to write: the extract of a short report, in the decoder's exact format.
TARGET = content_json(extract_report("No pneumothorax. Impression: Normal chest.", GENERATOR))


def _tiny(repo_root):
    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    return loading.load_model_and_processor(cfg, torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def random_model(repo_root, seed_reference_dir):
    return _tiny(repo_root)[0]


@pytest.fixture(scope="module")
def features(random_model, seed_reference_dir):
    images = torch.load(seed_reference_dir / "inputs.pt", weights_only=True)["images"][:1]
    with torch.no_grad():
        return random_model.encode_qformer(images)


@pytest.fixture(scope="module")
def json_model(repo_root, seed_reference_dir, features):
    """The tiny model fine-tuned (LLM and projection) on one JSON target until greedy decoding writes it."""
    torch.manual_seed(0)
    model, processor = _tiny(repo_root)
    for param in model.llama_model.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(80):
        loss = model({"image_features": features, "prompt": [PROMPT], "caption": [TARGET]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, processor


def test_constrained_equals_unconstrained_when_the_unconstrained_output_fits(json_model, features):
    model, _ = json_model
    both = features.expand(2, -1, -1)
    unconstrained = model.generate(None, [PROMPT] * 2, image_features=both, max_new_tokens=160)
    assert unconstrained == [TARGET, TARGET]  # the deliberate case: the plain output already fits the schema
    texts, reports = generate_structured(model, None, [PROMPT] * 2, "constrained", GENERATOR,
                                         image_features=both, max_new_tokens=160)
    assert texts == unconstrained
    assert reports[0] == {"schema_version": "1", **json.loads(TARGET), "generator": GENERATOR}
    assert schema_errors(reports[1]) == []


def test_constrained_sampling_always_parses(json_model, features):
    model, _ = json_model
    torch.manual_seed(0)
    contents = decode_constrained(model, None, [PROMPT] * 3, image_features=features.expand(3, -1, -1),
                                  max_new_tokens=200, do_sample=True, temperature=1.0, top_p=1.0)
    assert [schema_errors(c, content_only=True) for c in contents] == [[], [], []]


def test_random_model_is_held_to_the_grammar_and_a_cut_document_raises(random_model, features):
    from xraygpt.structured.constrained import SchemaDecoder

    _, ids = random_model.generate(None, [PROMPT], image_features=features, max_new_tokens=30, stop_strings=[],
                                   logits_processor=[SchemaDecoder.for_model(random_model).logits_processor()],
                                   return_ids=True)
    text = random_model.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert text.startswith('{"findings": [')  # the only way a document of the schema can start
    with pytest.raises(StructuredReportError, match=r"^constrained output of sample 0 ended before the JSON closed .*; raise --max-new-tokens \(was 30\)$"):
        decode_constrained(random_model, None, [PROMPT], image_features=features, max_new_tokens=30)


def test_generate_cli_writes_constrained_reports(json_model, monkeypatch, repo_root, seed_reference_dir, tmp_path):
    from xraygpt import generate

    monkeypatch.setattr(loading, "load_model_and_processor", lambda cfg, device: json_model)
    image = tmp_path / "xray_0.png"
    shutil.copy(seed_reference_dir / "images" / "xray_0.png", image)
    out = tmp_path / "r.jsonl"
    cfg = str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")
    assert generate.main(["--cfg-path", cfg, "--images", str(image), "--out", str(out), "--prompt", PROMPT,
                          "--max-new-tokens", "160", "--structured", "constrained", "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["report"] == TARGET
    assert schema_errors(record["structured"]) == []
    assert record["structured"]["generator"]["mode"] == "constrained"
    assert record["structured"]["findings"] == json.loads(TARGET)["findings"]
