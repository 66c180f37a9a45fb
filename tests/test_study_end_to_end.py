"""Frontal + lateral phantom studies through train.py (feature cache on), validation generation and evaluation."""
import json

import pytest

from tests.test_train_end_to_end import CONFIG, TINY, _losses
from tests.train_support import train_in_process
from xraygpt.datasets import phantoms


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    from xraygpt.tasks.tokenizer_training import texts_from_annotations, train_sentencepiece

    folder = tmp_path_factory.mktemp("phantom_studies")
    assert phantoms.main(["--out", str(folder), "--n", "30", "--seed", "1", "--views", "frontal,lateral"]) == 0
    train_sentencepiece(texts_from_annotations([folder / "filter_cap.json"]), folder / "tokenizer.model", 400)
    return folder


def test_two_view_studies_train_validate_and_evaluate(study_dir, tmp_path):
    from xraygpt.common.config import Config
    from xraygpt.quickstart import evaluate

    options = [f"datasets.phantoms.build_info.storage={study_dir}", f"model.tokenizer={study_dir}/tokenizer.model",
               f"run.output_dir={tmp_path}", f"run.job_id=studies", f"run.cache_dir={tmp_path}/cache", *TINY,
               "model.max_images=2", "run.valid_generate=4", "run.valid_max_new_tokens=6"]
    state = train_in_process(CONFIG, *options)
    assert state["global_step"] == 3 and all(v > 0 for v in _losses(tmp_path / "studies").values())
    # one cache entry per image: frontal and lateral of every train/val study
    entries = {json.dumps(e["image"]) for name in ("filter_cap.json", "filter_cap_val.json")
               for e in json.loads((study_dir / name).read_text())}
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2 * len(entries)
    cfg = Config({"cfg_path": CONFIG, "options": options})
    result = evaluate(cfg, tmp_path / "studies" / "model_best.safetensors", "test", 6)
    test_entries = json.loads((study_dir / "filter_cap_test.json").read_text())
    assert len(result["records"]) == len(test_entries) and "CE_micro_f1" in result["scores"]["summary"]


def test_a_model_capped_at_one_image_refuses_the_studies(study_dir, tmp_path):
    from xraygpt.common.errors import DataError

    options = [f"datasets.phantoms.build_info.storage={study_dir}", f"model.tokenizer={study_dir}/tokenizer.model",
               f"run.output_dir={tmp_path}", "run.job_id=capped", f"run.cache_dir={tmp_path}/cache", *TINY,
               "run.valid_splits=[]"]
    with pytest.raises(DataError, match="a sample has 2 images but model.max_images is 1"):
        train_in_process(CONFIG, *options)
