"""The serve API's ``response_format`` modes: extract (served), constrained (the batcher's building blocks)."""
from __future__ import annotations

import json

import pytest
import torch

from xraygpt.common.config import Config
from xraygpt.conversation import loading
from xraygpt.serve.errors import APIError
from xraygpt.serve.structured import (
    RowGrammar,
    check_response_format,
    constrained_answer,
    structured_mode,
)
from xraygpt.structured import extract_report, schema_errors
from xraygpt.structured.constrained import SchemaDecoder, content_json


def test_modes_of_a_response_format():
    assert structured_mode(None) is None and structured_mode({"type": "text"}) is None
    assert structured_mode({"type": "json_schema"}) == "extract"
    assert structured_mode({"type": "json_object", "mode": "constrained"}) == "constrained"
    check_response_format({"type": "json_schema", "mode": "extract"})
    check_response_format({"type": "json_schema", "mode": "constrained"}, constrained=True)
    with pytest.raises(APIError) as refused:
        check_response_format({"type": "json_schema", "mode": "constrained"})
    assert refused.value.status == 400 and refused.value.code == "constrained_unavailable"
    assert str(refused.value) == (
        "response_format mode 'constrained' is not available on this server (its batcher does not decode under the "
        "schema's grammar yet); use mode 'extract', or python -m xraygpt.generate --structured constrained")
    with pytest.raises(APIError, match=r"^unknown response_format mode 'json'; use 'extract' \(the default\)"):
        check_response_format({"type": "json_schema", "mode": "json"}, constrained=True)


@pytest.fixture(scope="module")
def tiny(repo_root, seed_reference_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    model = loading.load_model_and_processor(cfg, torch.device("cpu"))[0]
    features = model.encode_qformer(torch.load(seed_reference_dir / "inputs.pt", weights_only=True)["images"][:1])
    yield model, features.detach()
    torch.set_num_threads(threads)


@torch.no_grad()
def test_row_grammar_in_a_decode_loop_equals_the_constrained_generate(tiny):
    """What a continuous batcher does per constrained row (mask, argmax, accept) = generate under xgrammar."""
    model, features = tiny
    steps = 24
    reference = model.generate(None, [" Report as JSON."], image_features=features, return_ids=True, do_sample=False,
                               num_beams=1, max_new_tokens=steps, stop_strings=[],
                               logits_processor=[SchemaDecoder.for_model(model).logits_processor()])[1][0].tolist()
    embeds, attention = model.prepare_generation_inputs(None, [" Report as JSON."], image_features=features)
    llm = model.llama_model
    out = llm(inputs_embeds=embeds, attention_mask=attention, use_cache=True)
    grammar, tokens = RowGrammar(model), []
    for _ in range(steps):
        logits = out.logits[0, -1].clone()
        token = int(grammar.mask_(logits).argmax())
        tokens.append(token)
        if grammar.accept(token):
            break
        attention = torch.cat([attention, attention.new_ones(1, 1)], dim=1)
        out = llm(inputs_embeds=llm.get_input_embeddings()(torch.tensor([[token]])), attention_mask=attention,
                  cache=out.cache, use_cache=True)
    assert tokens == reference and len(tokens) == steps
    assert model.tokenizer.decode(tokens).startswith("{")  # the random model is held to the grammar
    disallowed = int(RowGrammar(model).mask_(out.logits[0, -1].clone()).argmin())
    with pytest.raises(ValueError, match=f"^token {disallowed} does not continue the schema's grammar"):
        RowGrammar(model).accept(disallowed)


def test_constrained_answer_completes_the_report_or_says_to_raise_max_tokens(tiny):
    model, _ = tiny
    content = content_json(extract_report("Small left pleural effusion. Impression: Effusion.",
                                          {"mode": "constrained", "model": "x", "checkpoint_sha256": None, "settings": {}}))
    report = json.loads(constrained_answer(content, model, "tiny", {"max_new_tokens": 300}))
    assert schema_errors(report) == [] and report["generator"]["mode"] == "constrained"
    assert report["findings"][0]["observation"] == "Pleural Effusion" and report["findings"][0]["laterality"] == "left"
    with pytest.raises(APIError) as cut:
        constrained_answer(content[:40], model, "tiny", {"max_new_tokens": 12})
    assert cut.value.status == 400 and cut.value.param == "max_tokens"
    assert str(cut.value).startswith("the constrained answer ended before the JSON closed (40 characters")
    assert str(cut.value).endswith("; raise max_tokens (was 12)")
