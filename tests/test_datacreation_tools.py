"""Cache, split, atomic writes, merge and the launchers' --help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from xraygpt.data_creation.cache import JsonlCache
from xraygpt.data_creation.merge import merge_datasets
from xraygpt.data_creation.records import DataCreationError, SourceItem
from xraygpt.data_creation.splitting import parse_fractions, sample_items, split_groups
from xraygpt.common.fileio import atomic_write_json


def test_cache_drops_a_torn_last_line_and_appends_after_it(tmp_path, caplog):
    path = tmp_path / "generated.jsonl"
    with JsonlCache(path) as cache:
        cache.append({"key": "a|report|v1", "entries": []})
        cache.append({"key": "b|report|v1", "entries": []})
    with path.open("ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(b'{"key": "c|rep')
    with JsonlCache(path) as cache:
        assert set(cache.records) == {"a|report|v1", "b|report|v1"}
        cache.append({"key": "c|report|v1", "entries": []})
    assert "incomplete last line" in caplog.text
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a|report|v1", "b|report|v1", "c|report|v1"]


def test_cache_refuses_a_second_writer_and_a_corrupt_line(tmp_path):
    path = tmp_path / "generated.jsonl"
    with JsonlCache(path):
        with pytest.raises(DataCreationError, match="another run is writing"):
            JsonlCache(path)
    path.write_text('{"key": "a"}\nnot json\n')
    with pytest.raises(DataCreationError, match="line 2: not a cache record"):
        JsonlCache(path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "filter_cap.json"
    atomic_write_json(path, [{"a": 1}])
    with pytest.raises(TypeError):
        atomic_write_json(path, [object()])
    assert json.loads(path.read_text()) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["filter_cap.json"]


def _items(groups):
    return [SourceItem("openi", f"id{i}", g, [], {}) for i, g in enumerate(groups)]


def test_split_is_by_group_seeded_and_gives_small_sets_a_val_and_test():
    items = _items([f"g{i // 3}" for i in range(30)])  # 10 groups of 3
    fractions = parse_fractions("0.8,0.1,0.1")
    assignment = split_groups(items, fractions, seed=1)
    assert sorted(assignment.values()).count("train") == 8
    assert split_groups(items, fractions, seed=1) == assignment
    assert split_groups(items, fractions, seed=2) != assignment
    tiny = split_groups(_items(["a", "b", "c"]), fractions, seed=0)
    assert sorted(tiny.values()) == ["test", "train", "val"]
    assert set(split_groups(_items(["a"]), fractions, seed=0).values()) == {"train"}
    for bad in ("0.8,0.1", "0.5,0.5,0.5", "0,0.5,0.5", "a,b,c"):
        with pytest.raises(DataCreationError, match="--split"):
            parse_fractions(bad)


def test_sampling_is_seeded_and_keeps_source_order():
    items = _items([f"g{i}" for i in range(20)])
    sample = sample_items(items, 5, seed=3)
    assert len(sample) == 5 and sample == sorted(sample, key=items.index)
    assert sample == sample_items(items, 5, seed=3) != sample_items(items, 5, seed=4)
    assert sample_items(items, 50, seed=3) == items


def _dataset(folder: Path, splits: dict) -> Path:
    """A finished dataset folder: one image and one entry per group, manifest with groups."""
    names = {"train": "filter_cap.json", "val": "filter_cap_val.json", "test": "filter_cap_test.json"}
    (folder / "image").mkdir(parents=True)
    manifest = {"splits": {}}
    for split, groups in splits.items():
        entries = []
        for group in groups:
            (folder / "image" / f"{group}.png").write_bytes(b"png-bytes-" + group.encode())
            entries.append({"image": f"image/{group}.png", "prompt": "Describe.", "caption": f"Report {group}."})
        (folder / names[split]).write_text(json.dumps(entries))
        manifest["splits"][split] = {"groups": list(groups)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_merge_namespaces_images_and_refuses_split_leakage(tmp_path):
    a = _dataset(tmp_path / "a", {"train": ["g1", "g2"], "val": ["g3"], "test": []})
    b = _dataset(tmp_path / "b", {"train": ["r1"], "val": [], "test": ["r2"]})
    out = tmp_path / "merged"
    manifest = merge_datasets([a, b], out, ["openi", "roco"])
    train = json.loads((out / "filter_cap.json").read_text())
    assert [e["image"] for e in train] == ["image/openi/g1.png", "image/openi/g2.png", "image/roco/r1.png"]
    assert (out / "image/roco/r1.png").read_bytes() == b"png-bytes-r1"
    assert manifest["counts"]["entries"] == {"train": 3, "val": 1, "test": 1}
    assert manifest["splits"]["test"]["groups"] == ["r2"]

    leaky = _dataset(tmp_path / "c", {"train": ["x"], "val": [], "test": ["g1"]})
    with pytest.raises(DataCreationError, match="group g1 is in train of a but in test of c"):
        merge_datasets([a, leaky], tmp_path / "merged2")
    with pytest.raises(DataCreationError, match="names must differ"):
        merge_datasets([a, b], tmp_path / "merged3", ["same", "same"])


def test_launchers_print_help():
    # One interpreter runs all three launchers (importing xraygpt once keeps this fast).
    scripts = ["create_openi.py", "create_roco.py", "merge_datasets.py"]
    code = (
        "import runpy, sys\n"
        "for script in sys.argv[1:]:\n"
        "    sys.argv = [script, '--help']\n"
        "    try:\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, (script, stop.code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *(f"Data_Creation_Scripts/{s}" for s in scripts)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for script in scripts:
        assert f"usage: {script}" in result.stdout
    assert result.stdout.count("docs/data_creation.md") == 3
    assert "--api-key-env" in result.stdout and "--kaggle-csv" in result.stdout and "--names" in result.stdout
