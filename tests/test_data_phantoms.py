"""Phantom generator: deterministic, findings visible where the report says, report = labels."""
from __future__ import annotations

import json
import re
import numpy as np
import pytest

from xraygpt.common.errors import ConfigurationError
from xraygpt.datasets import phantoms as P


def test_same_seed_same_sample_and_other_seed_differs():
    first, second = P.make_sample(7, seed=3), P.make_sample(7, seed=3)
    assert np.array_equal(first[0], second[0]) and first[2:] == second[2:]
    assert not np.array_equal(first[0], P.make_sample(7, seed=4)[0])
    pixels = first[0]
    assert pixels.dtype == np.uint8 and pixels.shape == (256, 256)
    assert 20 < pixels.mean() < 200 and pixels.std() > 25  # dark lungs and bright bones, not a flat picture


def _pair(findings: P.Findings, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy drawn without and with ``findings`` (the draws line up, so only the finding differs)."""
    return (
        P.draw_phantom(P.Findings(), np.random.default_rng(seed)).astype(float),
        P.draw_phantom(findings, np.random.default_rng(seed)).astype(float),
    )


def test_findings_change_the_image_on_the_reported_side():
    half = 128
    normal, effusion = _pair(P.Findings(effusion_left="moderate"))
    diff = effusion - normal
    # Patient left is image right; fluid is dense (brighter) and sits at the lung base.
    assert diff[half:, half:].mean() > 10 and abs(diff[:, :half].mean()) < 1
    normal, ptx = _pair(P.Findings(pneumothorax="right"))
    diff = ptx - normal
    assert diff[:half, :half].mean() < -4 and abs(diff[:, half:].mean()) < 1
    normal, big_heart = _pair(P.Findings(cardiomegaly=True))
    assert (big_heart - normal)[half:, :].mean() > 5
    normal, nodule = _pair(P.Findings(lesion=P.Lesion("mass", 50, "right upper lobe")))
    assert (nodule - normal)[:half, :half].max() > 50 and abs((nodule - normal)[:, half:]).max() < 1
    normal, consolidation = _pair(P.Findings(consolidation="left lower lobe"))
    assert (consolidation - normal)[:, half:].mean() > 3 and abs((consolidation - normal)[:, :half].mean()) < 1


POSITIVE = {
    "Cardiomegaly": r"heart size is enlarged|cardiac silhouette is enlarged|cardiomegaly",
    "Pleural Effusion": r"(small|moderate|large) (left |right |bilateral )pleural effusion",
    "Pneumothorax": r"(left|right)(-sided)? pneumothorax",
    "Lung Lesion": r"\d+ mm (nodule|mass)|\d+ mm [a-z ]+lobe (nodule|mass)",
    "Consolidation": r"(upper|middle|lower) lobe consolidation|consolidation is seen",
}
NEGATIVE = {
    "Pleural Effusion": r"no pleural effusion",
    "Pneumothorax": r"no pleural effusion or pneumothorax|no pneumothorax",
    "Consolidation": r"lungs are clear|no focal consolidation",
}


def test_report_states_every_label_and_negates_absent_ones():
    rng = np.random.default_rng(0)
    for _ in range(400):
        findings = P.sample_findings(rng)
        report = P.write_report(findings, rng).lower()
        labels = findings.labels()
        assert report.startswith("findings: ") and " impression: " in report
        for name, pattern in POSITIVE.items():
            assert bool(re.search(pattern, report)) == bool(labels[name]), (name, report)
        for name, pattern in NEGATIVE.items():
            if not labels[name]:
                assert re.search(pattern, report), (name, report)
        if labels["No Finding"]:
            assert "no pleural effusion or pneumothorax" in report
        for side, size in (("left", findings.effusion_left), ("right", findings.effusion_right)):
            if size and findings.effusion_left != findings.effusion_right:
                assert f"{size} {side} pleural effusion" in report
        if findings.lesion:
            assert f"{findings.lesion.size_mm} mm" in report and findings.lesion.lobe in report


def test_vqa_answers_agree_with_findings():
    f = P.Findings(effusion_right="small", cardiomegaly=True)
    answers = {q: fn(f) for q, fn in P.QUESTIONS.values()}
    assert answers["Is there a pleural effusion?"] == "Yes, there is a small right pleural effusion."
    assert "enlarged" in answers["What is the heart size?"]
    assert answers["Is there a pneumothorax?"].startswith("No")
    assert answers["Is this chest x-ray normal?"] == "No, it shows cardiomegaly and small right pleural effusion."
    normal = {q: fn(P.Findings()) for q, fn in P.QUESTIONS.values()}
    assert normal["Is there a pleural effusion?"] == "No, there is no pleural effusion."
    assert normal["Is this chest x-ray normal?"].startswith("Yes")


def test_generated_folder_is_deterministic_and_readable_by_the_builder(tmp_path):
    from xraygpt.common.registry import registry

    counts = P.generate_dataset(tmp_path / "a", n=24, seed=1, size=96)
    P.generate_dataset(tmp_path / "b", n=24, seed=1, size=96)
    assert sum(counts.values()) == 24 and not (tmp_path / "a.partial").exists()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert len(labels) == 24 and {"labels", "findings", "report", "split"} <= set(labels[0])
    datasets = registry.get_builder_class("phantoms")(
        {"build_info": {"storage": str(tmp_path / "a")}, "vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 32}}}
    ).build_datasets()
    per_image = 1 + 2  # one report and two VQA entries
    for split, n_images in counts.items():
        if n_images:
            assert len(datasets[split]) == per_image * n_images
    report_sample = next(datasets[s][i] for s in ("val", "test") if s in datasets for i in range(len(datasets[s])))
    assert report_sample["image"].shape == (3, 32, 32) and report_sample["prompt"].startswith(" ")
    truth = {label["image_id"]: label["report"] for label in labels}
    assert report_sample["caption"] == truth[report_sample["image_id"]]


def test_cli_refuses_to_overwrite_and_reports_speed(tmp_path, capsys):
    out = tmp_path / "ph"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["--out", str(out), "--n", "3", "--size", "64"]
    assert P.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert P.main(args + ["--overwrite", "--format", "png"]) == 0
    assert "images/s" in capsys.readouterr().out and not (out / "keep.txt").exists()
    assert len(list((out / "images").glob("*.png"))) == 3


@pytest.mark.parametrize("bad", ["nodules=0.5", "cardiomegaly"])
def test_cli_rejects_bad_prevalence(bad, capsys):
    with pytest.raises(ConfigurationError, match="--prevalence expects NAME=P"):
        P._parse_prevalence([bad])
    assert P.main(["--out", "unused", "--prevalence", bad]) == 2
    assert capsys.readouterr().err.startswith("error: --prevalence expects NAME=P")


def test_project_labeler_reads_phantom_reports_as_their_ground_truth():
    """The CheXpert-style labeler that scores generated reports must agree with the phantoms' labels."""
    from xraygpt.evaluation import chexpert_labeler as labeler

    rng = np.random.default_rng(1)
    for _ in range(300):
        findings = P.sample_findings(rng)
        report = P.write_report(findings, rng)
        truth, labelled = findings.labels(), labeler.label_report(report)
        for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation", "No Finding"):
            assert int(labelled[name] == 1) == truth[name], (name, report, labelled[name])
        assert not [k for k, v in labelled.items() if v == 1 and k not in truth], report
