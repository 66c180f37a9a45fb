"""Structured reports, extract mode: hand-written reports with known fields, schema validation of every output."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from xraygpt.datasets.phantoms import sample_findings, write_report
from xraygpt.evaluation.chexpert_labeler import label_report
from xraygpt.structured import (
    StructuredReportError,
    content_schema,
    extract_report,
    report_schema,
    schema_errors,
    sentences,
    validate_report,
)

GENERATOR = {"mode": "extract", "model": "test", "checkpoint_sha256": None, "settings": {"max_new_tokens": 10}}
STATUS = {1: "present", 0: "absent", -1: "uncertain"}


def _finding(report: dict, observation: str) -> dict:
    matches = [f for f in report["findings"] if f["observation"] == observation]
    assert len(matches) == 1, f"{observation}: {matches}"
    return matches[0]


def _fields(finding: dict) -> tuple:
    return finding["status"], finding["laterality"], finding["location"], finding["severity"], finding["evidence"]


# (report, {observation: (status, laterality, location, severity, evidence)}, impression, no_finding)
CASES = [
    (
        "Findings: There is a small left pleural effusion and right lower lobe consolidation. No pneumothorax. "
        "Impression: Small left effusion. Right lower lobe consolidation.",
        {
            "Pleural Effusion": ("present", "left", None, "small",
                                 "There is a small left pleural effusion and right lower lobe consolidation."),
            "Consolidation": ("present", "right", "right lower lobe", None,
                              "There is a small left pleural effusion and right lower lobe consolidation."),
            "Pneumothorax": ("absent", None, None, None, "No pneumothorax."),
        },
        "Small left effusion. Right lower lobe consolidation.",
        False,
    ),
    (  # negation through a list; normal statements are absent mentions; No Finding
        "The heart size is normal. No focal consolidation, pleural effusion, or pneumothorax.",
        {
            "Cardiomegaly": ("absent", None, None, None, "The heart size is normal."),
            "Consolidation": ("absent", None, None, None, "No focal consolidation, pleural effusion, or pneumothorax."),
            "Pleural Effusion": ("absent", None, None, None, "No focal consolidation, pleural effusion, or pneumothorax."),
            "Pneumothorax": ("absent", None, None, None, "No focal consolidation, pleural effusion, or pneumothorax."),
        },
        "",
        True,
    ),
    (  # uncertainty before and after the mention; side and location of a hedged finding
        "Possible right basilar atelectasis. Pneumonia cannot be excluded. Moderate cardiomegaly.",
        {
            "Atelectasis": ("uncertain", "right", "right basilar", None, "Possible right basilar atelectasis."),
            "Pneumonia": ("uncertain", None, None, None, "Pneumonia cannot be excluded."),
            "Cardiomegaly": ("present", None, None, "Moderate", "Moderate cardiomegaly."),
        },
        "",
        False,
    ),
    (  # sides from both segments; severity after a comma; size in mm; a 1.5 cm decimal is not a sentence end
        "Left and right pleural effusions, moderate. A 12 mm nodule in the right upper lobe is noted. "
        "There is a 1.5 cm mass in the left lower lobe.",
        {
            "Pleural Effusion": ("present", "bilateral", None, "moderate", "Left and right pleural effusions, moderate."),
            "Lung Lesion": ("present", "right", "right upper lobe", "12 mm", "A 12 mm nodule in the right upper lobe is noted."),
        },
        "",
        False,
    ),
    (  # two mentions of one finding in one sentence join their sides; present wins over a later absent
        "There is a small right pleural effusion and a moderate left pleural effusion. No pleural effusion on the prior.",
        {
            "Pleural Effusion": ("present", "bilateral", None, "small",
                                 "There is a small right pleural effusion and a moderate left pleural effusion."),
        },
        "",
        False,
    ),
    (  # post-negation; a right-sided pneumothorax
        "A right-sided pneumothorax is present. Pleural effusions are not seen. Impression: Right pneumothorax.",
        {
            "Pneumothorax": ("present", "right", None, None, "A right-sided pneumothorax is present."),
            "Pleural Effusion": ("absent", None, None, None, "Pleural effusions are not seen."),
        },
        "Right pneumothorax.",
        False,
    ),
]


@pytest.mark.parametrize("report, expected, impression, no_finding", CASES)
def test_extract_known_fields(report, expected, impression, no_finding):
    out = validate_report(extract_report(report, GENERATOR))
    assert {f["observation"] for f in out["findings"]} == set(expected)
    for observation, fields in expected.items():
        assert _fields(_finding(out, observation)) == fields, observation
    assert out["impression"] == impression
    assert out["no_finding"] is no_finding
    assert out["generator"] == GENERATOR and out["schema_version"] == "1"


def test_findings_follow_the_report_order():
    out = extract_report("No pneumothorax. There is a small left pleural effusion and right lower lobe consolidation.", GENERATOR)
    assert [f["observation"] for f in out["findings"]] == ["Pneumothorax", "Pleural Effusion", "Consolidation"]


def test_every_evidence_is_a_sentence_of_the_report_and_statuses_equal_the_labeler():
    report = CASES[0][0] + " " + CASES[2][0] + " Heart size is within normal limits; the mediastinum is widened."
    out = extract_report(report, GENERATOR)
    split = sentences(report)
    labels = label_report(report)
    assert {f["observation"]: f["status"] for f in out["findings"]} == {
        o: STATUS[v] for o, v in labels.items() if v is not None and o != "No Finding"
    }
    for finding in out["findings"]:
        assert finding["evidence"] in split and finding["evidence"] in report


def test_empty_and_normal_reports():
    assert extract_report("", GENERATOR)["findings"] == [] and extract_report("", GENERATOR)["no_finding"] is False
    normal = validate_report(extract_report("No acute cardiopulmonary abnormality.", GENERATOR))
    assert normal["findings"] == [] and normal["no_finding"] is True


def test_phantom_reports_give_their_ground_truth_sides_locations_and_sizes():
    checked = 0
    for index in range(150):
        rng = np.random.default_rng([11, index])
        truth = sample_findings(rng)
        out = validate_report(extract_report(write_report(truth, rng), GENERATOR))
        effusion = ("bilateral" if truth.effusion_left and truth.effusion_right
                    else "left" if truth.effusion_left else "right" if truth.effusion_right else None)
        if effusion:
            assert _fields(_finding(out, "Pleural Effusion"))[:2] == ("present", effusion)
            checked += 1
        else:
            assert _finding(out, "Pleural Effusion")["status"] == "absent"
        if truth.pneumothorax:
            assert _finding(out, "Pneumothorax")["laterality"] == truth.pneumothorax
        if truth.consolidation:
            assert _finding(out, "Consolidation")["location"] == truth.consolidation
        if truth.lesion:
            lesion = _finding(out, "Lung Lesion")
            assert (lesion["location"], lesion["severity"]) == (truth.lesion.lobe, f"{truth.lesion.size_mm} mm")
        assert _finding(out, "Cardiomegaly")["status"] == ("present" if truth.cardiomegaly else "absent")
        assert out["no_finding"] is (truth.labels()["No Finding"] == 1)
    assert checked > 20


def test_schema_rejects_bad_documents_with_the_path():
    good = extract_report(CASES[0][0], GENERATOR)
    assert schema_errors(good) == []
    bad = copy.deepcopy(good)
    bad["findings"][0]["status"] = "maybe"
    bad["findings"][1]["laterality"] = "both"
    del bad["impression"]
    errors = schema_errors(bad)
    assert errors == [
        "$: 'impression' is a required property",
        "$.findings[0].status: 'maybe' is not one of ['present', 'absent', 'uncertain']",
        "$.findings[1].laterality: 'both' is not one of ['left', 'right', 'bilateral', None]",
    ]
    with pytest.raises(StructuredReportError, match=r"^structured report does not fit schema v1: \$: 'impression' is a required"):
        validate_report(bad)
    wrong_hash = copy.deepcopy(good)
    wrong_hash["generator"]["checkpoint_sha256"] = "abc"
    assert schema_errors(wrong_hash) == ["$.generator.checkpoint_sha256: 'abc' does not match '^[0-9a-f]{64}$'"]


def test_content_schema_is_the_report_without_program_fields():
    import jsonschema

    full, content = report_schema(), content_schema()
    jsonschema.Draft202012Validator.check_schema(full)
    jsonschema.Draft202012Validator.check_schema(content)
    assert set(full["properties"]) - set(content["properties"]) == {"schema_version", "generator"}
    body = {k: v for k, v in extract_report(CASES[0][0], GENERATOR).items() if k not in ("schema_version", "generator")}
    assert schema_errors(body, content_only=True) == []
    assert schema_errors(body) == ["$: 'schema_version' is a required property", "$: 'generator' is a required property"]
