"""JSON-target training items (``--tasks structured``): offline rules and checked LLM answers."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from xraygpt.data_creation.cli import openi_main
from xraygpt.data_creation.records import GenerationRejected, Job, SourceItem
from xraygpt.structured import extract_report, schema_errors
from xraygpt.structured.constrained import content_json
from xraygpt.structured.targets import STRUCTURED_PROMPT, llm_target, rule_target

SPLIT_FILES = ("filter_cap.json", "filter_cap_val.json", "filter_cap_test.json")
REPORT = "There is a small left pleural effusion. No pneumothorax."


def test_offline_openi_structured_items_are_schema_valid_extracts(sample_data_dir, tmp_path):
    out = tmp_path / "ds"
    assert openi_main(["--root", str(sample_data_dir / "openi_kaggle"), "--out", str(out), "--offline",
                       "--no-progress", "--tasks", "structured,report"]) == 0
    entries = [e for name in SPLIT_FILES if (out / name).exists() for e in json.loads((out / name).read_text())]
    structured = [e for e in entries if e.get("task") == "structured"]
    reports = {e["image"]: e for e in entries if "task" not in e}  # report entries keep today's three keys
    assert structured and len(structured) == len(reports)
    for entry in structured:
        assert entry["prompt"] == STRUCTURED_PROMPT
        content = json.loads(entry["caption"])
        assert schema_errors(content, content_only=True) == [] and entry["caption"] == content_json(content)
        # the same statuses as the report entry of the image read in extract mode
        prose = extract_report(reports[entry["image"]]["caption"], {})
        assert {f["observation"]: f["status"] for f in content["findings"]} == {
            f["observation"]: f["status"] for f in prose["findings"]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompt_versions"]["structured"]


def test_rule_target_is_the_extract_without_program_fields():
    assert json.loads(rule_target(REPORT)) == {k: v for k, v in extract_report(REPORT, {}).items()
                                               if k not in ("schema_version", "generator")}


def test_llm_answers_are_checked_against_schema_and_source():
    good = rule_target(REPORT)
    assert llm_target(good.replace(", ", ",  "), REPORT) == good  # re-written in the canonical format
    bad_status = good.replace('"present"', '"maybe"')
    with pytest.raises(ValueError, match=r"structured answer does not fit schema v1: \$\.findings\[0\]\.status: 'maybe'"):
        llm_target(bad_status, REPORT)
    invented = good.replace("There is a small left pleural effusion.", "Large right effusion.")
    with pytest.raises(ValueError, match="quotes evidence that is not in the report: 'Large right effusion.'"):
        llm_target(invented, REPORT)
    twice = json.loads(good)
    twice["findings"].append(twice["findings"][0])
    with pytest.raises(ValueError, match="lists Pleural Effusion more than once"):
        llm_target(json.dumps(twice), REPORT)
    with pytest.raises(ValueError, match=r"^not JSON"):
        llm_target("{oops", REPORT)


def test_llm_generator_parses_structured_answers(tmp_path):
    from xraygpt.data_creation.llm import LLMGenerator, LLMSettings, build_messages

    item = SourceItem("openi", "1", "p1", [], {"findings": REPORT, "impression": ""})
    job = Job(item, "structured", "llm-structured-v1")
    generator = LLMGenerator.__new__(LLMGenerator)  # _parse needs no client
    generator.settings = LLMSettings(model="m")
    completion = types.SimpleNamespace(choices=[types.SimpleNamespace(
        finish_reason="stop", message=types.SimpleNamespace(content="```json\n" + rule_target(REPORT) + "\n```"))])
    assert generator._parse(job, completion) == [{"prompt": STRUCTURED_PROMPT, "caption": rule_target(REPORT)}]
    assert '"status": "present|absent|uncertain"' in build_messages(job, attach_image=False)[1]["content"]
    roco = Job(SourceItem("roco", "R", "a", [], {"caption": "CT."}), "structured", "v")
    with pytest.raises(GenerationRejected, match="OpenI items only"):
        generator._parse(roco, completion)
