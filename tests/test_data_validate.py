"""validate: exit codes and messages for clean data, every kind of bad entry, bad JSON and configs."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from xraygpt.datasets.validate import main


def _run(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def _folder(root, entries, images=("a.png", "b.png")):
    (root / "img").mkdir(parents=True)
    for name in images:
        Image.fromarray(np.full((16, 16), 90, np.uint8)).save(root / "img" / name)
    (root / "filter_cap.json").write_text(json.dumps(entries))
    return root


def test_clean_folder_passes(tmp_path, capsys):
    root = _folder(tmp_path, [{"image": "img/a.png", "prompt": "q", "caption": "c"}, {"image": "img/b.png", "prompt": "q", "caption": "d"}])
    code, out = _run(capsys, root)
    assert code == 0 and "2 entries, 2 images: 0 error(s), 0 warning(s); 2 entries usable" in out.out


def test_every_problem_is_reported_with_its_entry(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    entries = [
        {"image": "img/a.png", "prompt": "q", "caption": "fine"},
        {"image": "img/a.png", "prompt": "q", "caption": "fine"},  # duplicate
        {"image": "img/missing.png", "prompt": "q", "caption": "c"},
        {"image": "img/broken.png", "prompt": "q", "caption": "c"},
        {"image": "img/a.png", "prompt": "q", "caption": "   "},
        {"image": "img/a.png", "prompt": 3, "caption": "c"},
        {"prompt": "q", "caption": "c"},
        "not an object",
    ]
    root = _folder(tmp_path / "d", entries, images=("a.png",))
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, out = _run(capsys, root)
    text = out.out
    ann = root / "filter_cap.json"
    assert code == 1 and "FAILED" in text
    assert f"warning: {ann}[1]: duplicate of entry 0" in text
    assert f"error: {ann}[2]: image {root / 'img' / 'missing.png'}: file not found" in text
    assert f"error: {ann}[3]: image {root / 'img' / 'broken.png'}: " in text
    assert f"error: {ann}[4]: empty caption" in text
    assert f"error: {ann}[5]: field 'prompt' must be a string, got int 3" in text
    assert f"error: {ann}[6]: missing field 'image' (or 'image_id')" in text
    assert f"error: {ann}[7]: entry must be an object, got str" in text
    assert "6 error(s), 1 warning(s); 2 entries usable" in text
    # --quick skips decoding, so only the truly missing file is an image error.
    code, out = _run(capsys, root, "--quick")
    assert "broken.png" not in out.out and "missing.png: file not found" in out.out


def test_strict_turns_duplicates_into_failure(tmp_path, capsys):
    entry = {"image": "img/a.png", "prompt": "q", "caption": "c"}
    root = _folder(tmp_path, [entry, entry])
    assert _run(capsys, root)[0] == 0
    assert _run(capsys, root, "--strict")[0] == 1


def test_shared_bad_annotation_files(sample_data_dir, capsys):
    bad = sample_data_dir / "bad_inputs"
    code, out = _run(capsys, bad / "filter_cap_malformed.json")
    assert code == 1 and "invalid JSON at line 11, column 71" in out.out
    code, out = _run(capsys, bad / "filter_cap_wrong_schema.json", "--image-dir", sample_data_dir / "xraygpt_openi" / "image")
    ann = bad / "filter_cap_wrong_schema.json"
    expected = [
        "[0]: missing field 'caption'",
        "[1]: image for image_id '1_IM-9999-9999.dcm' not found",
        "[2]: field 'caption' must be a string, got int 12345",
        "[3]: field 'caption' must be a string, got null",
        "[4]: missing field 'image' (or 'image_id')",
        "[5]: empty caption",
        "[6]: field 'caption' must be a string, got list",
    ]
    assert code == 1
    for line in expected:
        assert f"error: {ann}{line}" in out.out
    assert "[7]" not in out.out and "7 error(s), 0 warning(s); 1 entries usable" in out.out


def test_config_and_missing_paths(tmp_path, capsys):
    root = _folder(tmp_path / "data", [{"image": "img/a.png", "prompt": "q", "caption": "c"}])
    cfg = tmp_path / "job.yaml"
    cfg.write_text("datasets:\n  medvqa:\n    build_info: {storage: '${cfg_dir:}/data'}\n")
    assert _run(capsys, cfg)[0] == 0
    code, out = _run(capsys, tmp_path / "nothing")
    assert code == 2 and "does not exist" in out.err
