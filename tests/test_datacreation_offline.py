"""Offline mode on the real OpenI / ROCO samples, input errors, and the rule-based text."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xraygpt.data_creation.cli import openi_main, roco_main
from xraygpt.data_creation.offline import detect_modality, parse_mesh, with_article
from xraygpt.data_creation.openi import read_openi
from xraygpt.data_creation.records import DataCreationError
from xraygpt.data_creation.text import clean_report_text, join_report

SPLIT_FILES = ("filter_cap.json", "filter_cap_val.json", "filter_cap_test.json")


def load_all(out: Path) -> list:
    return [entry for name in SPLIT_FILES for entry in json.loads((out / name).read_text())]


def test_report_clean_up_drops_masked_sentences_and_list_numbers():
    text = "1. Bullous emphysema.  2. Scarring in the left apex.There is XXXX scarring. Normal chest x-XXXX. no acute disease"
    assert clean_report_text(text) == "Bullous emphysema. Scarring in the left apex. Normal chest x-ray. No acute disease."
    assert join_report("Lungs clear. Heart normal.", "Lungs clear. No acute disease.") == "Lungs clear. Heart normal. No acute disease."
    assert clean_report_text("There are no XXXX of a pleural effusion.") == ""


def test_mesh_terms_become_findings_with_locations():
    assert parse_mesh("Opacity/lung/apex/left/irregular;Cardiomegaly/borderline;normal;No Indexing") == [
        ("opacity", "irregular opacity", "in the left lung apex"),
        ("cardiomegaly", "borderline cardiomegaly", ""),
    ]
    assert parse_mesh("Calcified Granuloma/lung/upper lobe/right;Pleural Effusion/bilateral;Hernia, Hiatal") == [
        ("calcified granuloma", "calcified granuloma", "in the right upper lobe"),
        ("pleural effusion", "pleural effusion", "bilaterally"),
        ("hiatal hernia", "hiatal hernia", ""),
    ]
    # A structure heading is only a finding with its qualifier.
    assert parse_mesh("Pulmonary Artery/enlarged;Lung") == [("enlarged pulmonary artery", "enlarged pulmonary artery", "")]


def test_modality_detection_needs_exactly_one_modality():
    assert detect_modality("Axial CT of the abdomen with contrast") == "computed tomography (CT) image"
    assert detect_modality("Chest radiograph showing a nodule") == "X-ray radiograph"
    assert detect_modality("CT and MRI of the brain") is None
    assert detect_modality("Lung nodules") is None
    assert detect_modality("Sonogram of the left breast") == "ultrasound image"
    assert [with_article(p) for p in ("X-ray radiograph", "ultrasound image", "magnetic resonance (MR) image")] == [
        "an X-ray radiograph", "an ultrasound image", "a magnetic resonance (MR) image"]


@pytest.fixture(scope="module")
def openi_dataset(sample_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("openi") / "dataset"
    args = ["--root", str(sample_data_dir / "openi_kaggle"), "--out", str(out), "--offline", "--no-progress"]
    assert openi_main(args) == 0
    return out, args


def test_offline_openi_from_real_samples(openi_dataset):
    out, _ = openi_dataset
    manifest = json.loads((out / "manifest.json").read_text())
    rejected = {(r["source_id"], r["stage"]): r["reason"] for r in manifest["rejected"]}
    # The four studies without a Frontal view, and the empty findings / impressions of the README.
    for uid in (500, 1945, 2656, 3068):
        assert rejected[(f"openi:{uid}", "read")] == "study has no Frontal image"
    for uid in (894, 2881, 3600, 3870):
        assert "findings has 0 characters" in rejected[(f"openi:{uid}", "filter")]
    for uid in (326, 3368):
        assert "impression has 0 characters" in rejected[(f"openi:{uid}", "filter")]
    entries = load_all(out)
    assert sum(manifest["counts"]["entries"].values()) == len(entries) > 0
    assert all("XXXX" not in e["caption"] and e["prompt"] and e["caption"] for e in entries)
    # uid 1: the Frontal file (not the name-sorted first file), report cleaned of its masked sentence.
    uid1 = [e for e in entries if e["image"] == "image/1_IM-0001-4001.dcm.png"]
    report = next(e["caption"] for e in uid1 if "cardiac silhouette" in e["caption"])
    assert report.endswith("There is no evidence of pneumothorax. Normal chest x-ray.")
    assert "pleural effusion" not in report  # "There are no XXXX of a pleural effusion." was dropped
    assert {"prompt": "Is this chest X-ray normal?", "caption": "Yes, this chest X-ray is normal."} in [
        {k: e[k] for k in ("prompt", "caption")} for e in uid1
    ]
    assert not any("1_IM-0001-3001" in e["image"] for e in entries)  # the Lateral view is never used
    for entry in entries:
        assert (out / entry["image"]).is_file()
    splits = [set(manifest["splits"][s]["groups"]) for s in ("train", "val", "test")]
    assert all(splits) and not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_offline_is_deterministic_and_resumes_from_cache(openi_dataset, tmp_path):
    out, args = openi_dataset
    first = {name: (out / name).read_bytes() for name in SPLIT_FILES}
    other = tmp_path / "again"
    assert openi_main([*args[:3], str(other), *args[4:]]) == 0
    assert {name: (other / name).read_bytes() for name in SPLIT_FILES} == first
    assert openi_main([*args[:3], str(other), *args[4:]]) == 0
    counts = json.loads((other / "manifest.json").read_text())["counts"]
    # Only the job that was rejected last time is tried again; accepted ones come from the cache.
    assert counts["jobs_run_now"] == counts["rejected_by_stage"]["generate"] == 1
    assert {name: (other / name).read_bytes() for name in SPLIT_FILES} == first


@pytest.mark.parametrize("layout", ["github", "kaggle"])
def test_offline_roco_both_layouts(sample_data_dir, tmp_path, layout):
    roco = sample_data_dir / "roco"
    source = (["--roco-dir", str(roco / "data/validation/radiology")] if layout == "github"
              else ["--kaggle-csv", str(roco / "kaggle/radiologyvaldata.csv")])
    out = tmp_path / layout
    assert roco_main([*source, "--out", str(out), "--offline", "--no-progress", "--image-format", "jpeg",
                      "--exclude-licence", "NO-CC CODE"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rejected = {r["source_id"]: r["reason"] for r in manifest["rejected"] if r["stage"] == "filter"}
    assert "caption has 12 characters" in rejected["ROCO_05014"]  # "Retethering."
    assert "caption has 13 characters" in rejected["ROCO_18467"]  # "Lung nodules."
    if layout == "github":
        assert rejected["ROCO_12802"] == "licence NO-CC CODE excluded"
        assert len(rejected) == 2 + 5
    entries = load_all(out)
    reports = {e["image"]: e["caption"] for e in entries if e["prompt"].startswith(("Describe", "What does", "Write"))}
    assert reports["image/ROCO_10704.jpg"] == "CT coronal view showed markedly distended cecum, compressed stomach and lot of free air."
    assert all(image.endswith(".jpg") and (out / image).is_file() for image in reports)
    # Figures of one PMC article are one group.
    assert any(g.startswith("roco:PMC") for g in manifest["splits"]["train"]["groups"])


def test_bad_openi_inputs_give_clear_errors(sample_data_dir, tmp_path):
    bad = sample_data_dir / "bad_inputs"
    kaggle = sample_data_dir / "openi_kaggle"
    images = kaggle / "images" / "images_normalized"
    with pytest.raises(DataCreationError) as error:
        read_openi(reports_csv=bad / "indiana_reports_missing_findings_col.csv",
                   projections_csv=kaggle / "indiana_projections.csv", images_dir=images)
    message = str(error.value)
    assert "indiana_reports_missing_findings_col.csv" in message and "missing column(s) ['findings']" in message

    items, rejections = read_openi(reports_csv=kaggle / "indiana_reports.csv",
                                   projections_csv=bad / "indiana_projections_dangling_filename.csv", images_dir=images)
    assert [item.source_id for item in items] == ["openi:1", "openi:2", "openi:3"]
    dangling = [r for r in rejections if "IM-9999-9999" in r.reason]
    assert len(dangling) == 1 and dangling[0].reason.startswith("image listed in indiana_projections_dangling_filename.csv is missing")
    assert str(images / "1_IM-9999-9999.dcm.png") in dangling[0].reason


def test_unreadable_image_is_rejected_not_fatal(sample_data_dir, tmp_path):
    root = tmp_path / "openi"
    images = root / "images" / "images_normalized"
    images.mkdir(parents=True)
    kaggle = sample_data_dir / "openi_kaggle"
    shutil.copy(kaggle / "indiana_reports.csv", root)
    (root / "indiana_projections.csv").write_text("uid,filename,projection\n1,a.png,Frontal\n2,b.png,Frontal\n")
    shutil.copy(kaggle / "images/images_normalized/1_IM-0001-4001.dcm.png", images / "a.png")
    shutil.copy(sample_data_dir / "bad_inputs" / "truncated.jpg", images / "b.png")
    out = tmp_path / "out"
    assert openi_main(["--root", str(root), "--out", str(out), "--offline", "--no-progress", "--split", "1,0,0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    image_rejections = [r for r in manifest["rejected"] if r["stage"] == "image"]
    assert [r["source_id"] for r in image_rejections] == ["openi:2", "openi:2"]
    assert "b.png" in image_rejections[0]["reason"]
    assert {e["image"] for e in load_all(out)} == {"image/a.png"}
    assert not (out / "image" / "b.png").exists()


def test_missing_input_folder_exits_with_message(tmp_path, capsys):
    assert openi_main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--offline"]) == 2
    assert "OpenI image folder not found" in capsys.readouterr().err


def test_merged_offline_dataset_validates_and_loads_in_the_medvqa_builder(openi_dataset, sample_data_dir, tmp_path, capsys):
    from xraygpt.common.registry import registry
    from xraygpt.data_creation.merge import merge_datasets
    from xraygpt.datasets.validate import main as validate

    openi, _ = openi_dataset
    roco = tmp_path / "roco"
    assert roco_main(["--roco-dir", str(sample_data_dir / "roco/data/validation/radiology"), "--out", str(roco),
                      "--offline", "--no-progress"]) == 0
    merged = tmp_path / "medvqa"
    manifest = merge_datasets([openi, roco], merged, ["openi", "roco"])
    for folder in (openi, roco, merged):  # --strict: duplicates (warnings) fail too
        capsys.readouterr()
        assert validate([str(folder), "--strict"]) == 0, capsys.readouterr().out
        assert " 0 error(s), 0 warning(s)" in capsys.readouterr().out
    datasets = registry.get_builder_class("medvqa")({"build_info": {"storage": str(merged)}}).build_datasets()
    assert {split: len(ds) for split, ds in datasets.items()} == manifest["counts"]["entries"]
    sample = datasets["val"][0]
    first = json.loads((merged / "filter_cap_val.json").read_text())[0]
    assert sample["image"].shape[0] == 3 and sample["caption"].strip() == first["caption"]
    assert sample["image_id"] == Path(first["image"]).stem
