"""Study entries (``"image": [...]`` + ``"views"``): parsing, loading, collate, bad samples, validate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xraygpt.datasets.annotations import parse_annotations
from xraygpt.datasets.caption_dataset import BadSampleError, ImageTextDataset, collate
from xraygpt.datasets.validate import main as validate_main
from xraygpt.processors.base import build_processor

STUDY = {"image": ["img/f.png", "img/l.png"], "views": ["Frontal", "Lateral"], "prompt": "Describe.", "caption": "Normal."}
SINGLE = {"image": "img/f.png", "prompt": "Describe.", "caption": "Normal too."}


def _folder(root, entries, images=("f.png", "l.png")):
    (root / "img").mkdir(parents=True)
    for value, name in enumerate(images):
        Image.fromarray(np.full((16, 16), 60 + 40 * value, np.uint8)).save(root / "img" / name)
    ann = root / "filter_cap.json"
    ann.write_text(json.dumps(entries))
    return ann


def test_study_entries_parse_with_their_views(tmp_path):
    ann = _folder(tmp_path, [STUDY, SINGLE, {**STUDY, "views": None}])
    records, issues = parse_annotations(ann)
    assert issues == []
    study, single, unnamed = records
    assert study.images == (tmp_path / "img/f.png", tmp_path / "img/l.png") and study.views == ("Frontal", "Lateral")
    assert study.image_path == tmp_path / "img/f.png" and study.image_id == "f"
    assert single.images == (tmp_path / "img/f.png",) and single.study_images == () and single.views == ()
    assert unnamed.views == ()


def test_bad_study_entries_are_reported(tmp_path):
    ann = _folder(tmp_path, [{**STUDY, "image": []}, {**STUDY, "views": ["Frontal"]}, {**STUDY, "views": "PA"},
                             {**STUDY, "image": ["img/f.png", 3]}, {**SINGLE, "views": ["PA", "LAT"]}])
    records, issues = parse_annotations(ann)
    assert records == []
    assert [i.message for i in issues] == [
        "field 'image' is an empty list (give at least one path)",
        "field 'views' names 1 views for 2 images",
        'field \'views\' must be a list of view names, got "PA"',
        'field \'image\' must list non-empty path strings, got ["img/f.png", 3]',
        "field 'views' names 2 views for 1 images",
    ]


def test_dataset_and_collate_mix_studies_and_single_images(tmp_path):
    ann = _folder(tmp_path, [STUDY, SINGLE])
    records, _ = parse_annotations(ann)
    dataset = ImageTextDataset(records, build_processor({"name": "blip2_image_eval", "image_size": 32}))
    study, single = dataset[0], dataset[1]
    assert study["image"].shape == (2, 3, 32, 32) and study["views"] == ["Frontal", "Lateral"]
    assert single["image"].shape == (3, 32, 32) and "views" not in single  # one-image samples are unchanged
    batch = collate([study, None, single])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image_counts"].tolist() == [2, 1]
    assert torch.equal(batch["image"][2], single["image"]) and torch.equal(batch["image"][:2], study["image"])
    assert batch["views"] == [["Frontal", "Lateral"], None] and batch["num_skipped"] == 1
    assert batch["caption"] == ["Normal.", "Normal too."]
    plain = collate([single, single])
    assert plain["image"].shape == (2, 3, 32, 32) and "image_counts" not in plain


def test_a_bad_view_is_named_under_both_policies(tmp_path):
    ann = _folder(tmp_path, [STUDY])
    (tmp_path / "img" / "l.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    records, _ = parse_annotations(ann)
    with pytest.raises(BadSampleError, match=r"bad sample dataset\[0\] .* image .*l\.png: not a recognised image"):
        ImageTextDataset(records, on_bad_sample="error")[0]
    skipping = ImageTextDataset(records, on_bad_sample="skip")
    assert skipping[0] is None and skipping.skipped == [str(tmp_path / "img" / "l.png")]


def test_validate_checks_every_view(tmp_path, capsys):
    ann = _folder(tmp_path, [STUDY, {**STUDY, "image": ["img/f.png", "img/missing.png"]}])
    assert validate_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"error: {ann}[1]: image {tmp_path / 'img' / 'missing.png'}: file not found" in out
    assert "2 entries, 3 images: 1 error(s), 0 warning(s); 1 entries usable" in out


def test_phantoms_with_a_lateral_view_keep_the_frontal_images_and_load_as_studies(tmp_path):
    from xraygpt.common.registry import registry  # noqa: F401  (builders registered)
    from xraygpt.datasets.phantom_lateral import draw_lateral
    from xraygpt.datasets.phantoms import Findings, generate_dataset

    generate_dataset(tmp_path / "one", n=6, seed=3, size=64, vqa_per_image=1)
    generate_dataset(tmp_path / "two", n=6, seed=3, size=64, vqa_per_image=1, views=("frontal", "lateral"))
    for index in range(6):
        name = f"images/phantom_{index:06d}.jpg"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    entries = json.loads((tmp_path / "two" / "filter_cap.json").read_text())
    assert all(e["views"] == ["Frontal", "Lateral"] and e["image"][1].endswith("_lat.jpg") for e in entries)
    records, issues = parse_annotations(tmp_path / "two" / "filter_cap.json")
    assert issues == [] and all(len(r.images) == 2 for r in records)
    assert validate_main([str(tmp_path / "two")]) == 0
    # the lateral shows the findings: fluid whitens the posterior recess, an enlarged heart covers more of the film
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    normal, effusion = draw_lateral(Findings(), rng()).astype(float), draw_lateral(Findings(effusion_left="large"), rng()).astype(float)
    recess = (slice(150, 195), slice(150, 200))
    assert effusion[recess].mean() > normal[recess].mean() + 20
    big_heart = draw_lateral(Findings(cardiomegaly=True), rng()).astype(float)
    assert (big_heart > 150).sum() > (normal > 150).sum()
    with pytest.raises(ValueError, match="views must be frontal or frontal,lateral, got lateral"):
        generate_dataset(tmp_path / "bad", n=1, views=("lateral",))


def test_openi_study_level_groups_frontal_and_lateral(sample_data_dir, tmp_path):
    import csv

    from xraygpt.data_creation.cli import openi_main

    root = sample_data_dir / "openi_kaggle"
    out = tmp_path / "ds"
    assert openi_main(["--root", str(root), "--out", str(out), "--offline", "--no-progress", "--study-level",
                       "--tasks", "report"]) == 0
    views = {}
    with open(root / "indiana_projections.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            views.setdefault(row["uid"], []).append((row["projection"], row["filename"]))
    entries = [e for name in ("filter_cap.json", "filter_cap_val.json", "filter_cap_test.json")
               for e in json.loads((out / name).read_text())]
    studies = [e for e in entries if isinstance(e["image"], list)]
    assert studies and len({e["caption"] for e in entries}) >= len(studies)
    for entry in studies:
        frontal, lateral = (Path(p).name for p in entry["image"])
        uid = frontal.split("_")[0]
        assert entry["views"] == ["Frontal", "Lateral"]
        assert frontal == next(f for p, f in views[uid] if p == "Frontal")
        assert lateral == next(f for p, f in views[uid] if p == "Lateral")
    # studies without a lateral keep today's one-image entries; the split stays per study (uid)
    singles = [e for e in entries if isinstance(e["image"], str)]
    assert all(not any(p == "Lateral" for p, _ in views[Path(e["image"]).name.split("_")[0]]) for e in singles)
    assert validate_main([str(out)]) == 0
    assert openi_main(["--root", str(root), "--out", str(tmp_path / "x"), "--offline", "--study-level",
                       "--all-images"]) == 2
