"""The runner against a stand-in model that follows the model contract (tests/train_support.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.train_support import final_weights, train_in_process, write_config
from xraygpt.common.checkpointing import CheckpointError, list_checkpoints
from xraygpt.runners.samplers import ResumableBatchSampler


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}


def _losses(job_dir, kind="train"):
    lines = [json.loads(line) for line in (job_dir / "log.jsonl").read_text().splitlines()]
    return {rec["step"]: rec["loss"] for rec in lines if rec["kind"] == kind}


# ------------------------------------------------------------------- samplers
def test_sampler_shards_cover_the_single_process_batches():
    single = list(ResumableBatchSampler(22, 4, seed=3))
    ranks = [list(ResumableBatchSampler(22, 2, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(single) == 5 and all(len(r) == 5 for r in ranks)
    for i, batch in enumerate(single):
        assert sorted(ranks[0][i] + ranks[1][i]) == sorted(batch)
    assert not set(ranks[0][0]) & set(ranks[1][0])


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    sampler = ResumableBatchSampler(20, 3, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(4)
    assert list(sampler) == full[4:]
    sampler.set_start(0)
    sampler.set_epoch(3)
    assert list(sampler) != full


def test_group_by_length_batches_hold_similar_lengths():
    lengths = [i % 50 for i in range(400)]
    batches = list(ResumableBatchSampler(400, 8, seed=0, lengths=lengths, group_window=50))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    random_batches = list(ResumableBatchSampler(400, 8, seed=0))
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in random_batches) / 50
    assert spread < 2 < random_spread
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert batches[:3] != sorted(batches, key=lambda b: -lengths[b[0]])[:3]  # batch order still shuffled


# --------------------------------------------------------------------- runner
def test_training_logs_checkpoints_best_and_prunes(tmp_path):
    cfg = write_config(tmp_path, run={"save_freq": 4, "keep_last_n": 1})
    state = train_in_process(cfg)
    job = tmp_path / "out" / "job"
    losses = _losses(job)
    assert sorted(losses) == list(range(1, 13))
    valid = _losses(job, "valid")
    assert valid[12] < valid[6]  # it learns
    best = json.loads((job / "checkpoints" / "best.json").read_text())
    assert best["checkpoint"] == "step_00000012" and state["best_checkpoint"] == "step_00000012"
    assert [p.name for p in list_checkpoints(job / "checkpoints")] == ["step_00000012"]
    assert "standin_toy" in (job / "config.yaml").read_text()
    assert any((job / "tensorboard").iterdir())


def test_accumulation_equals_larger_batch(tmp_path):
    big = write_config(tmp_path, run={"batch_size_train": 4, "job_id": "big"})
    small = write_config(tmp_path, run={"batch_size_train": 2, "accum_grad_iters": 2, "job_id": "acc"},
                         name="acc.yaml")
    train_in_process(big)
    train_in_process(small)
    a, b = final_weights(tmp_path / "out" / "big"), final_weights(tmp_path / "out" / "acc")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    la, lb = _losses(tmp_path / "out" / "big"), _losses(tmp_path / "out" / "acc")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """Kill a run (SIGKILL) after its step-4 checkpoint, resume it, compare with an uninterrupted run."""
    run = {"save_freq": 2, "keep_last_n": 0, "num_workers": 0}
    reference = write_config(tmp_path, run={**run, "job_id": "reference"}, model={"dropout": 0.2})
    train_in_process(reference)

    killed = write_config(tmp_path, run={**run, "job_id": "killed"}, model={"dropout": 0.2}, name="killed.yaml")
    ckpt4 = tmp_path / "out" / "killed" / "checkpoints" / "step_00000004"
    proc = subprocess.Popen([sys.executable, "-m", "tests.train_support", "--cfg-path", str(killed)], cwd=REPO_ROOT,
                            env={**_env(), "STANDIN_STEP_DELAY": "0.25"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not ckpt4.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert still_running and ckpt4.exists(), proc.stderr.read().decode()[-2000:]

    resumed = write_config(tmp_path, run={**run, "job_id": "resumed", "resume_ckpt_path": str(ckpt4)},
                           model={"dropout": 0.2}, name="resumed.yaml")
    out = subprocess.run([sys.executable, "-m", "tests.train_support", "--cfg-path", str(resumed)], cwd=REPO_ROOT,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    ref_w, res_w = final_weights(tmp_path / "out" / "reference"), final_weights(tmp_path / "out" / "resumed")
    assert ref_w.keys() == res_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], res_w[key]), key
    ref_losses, res_losses = _losses(tmp_path / "out" / "reference"), _losses(tmp_path / "out" / "resumed")
    assert sorted(res_losses) == list(range(5, 13))
    assert all(res_losses[k] == ref_losses[k] for k in res_losses)


def test_resume_from_foreign_or_mismatched_checkpoint_is_clear(tmp_path):
    foreign = tmp_path / "stage2.pth"
    torch.save({"model": {}}, foreign)
    cfg = write_config(tmp_path, run={"resume_ckpt_path": str(foreign)})
    with pytest.raises(CheckpointError, match="model.ckpt"):
        train_in_process(cfg)

    first = write_config(tmp_path, run={"max_epoch": 1, "job_id": "first"}, name="first.yaml")
    train_in_process(first)
    ckpt = list_checkpoints(tmp_path / "out" / "first" / "checkpoints")[-1]
    from safetensors.torch import load_file, save_file

    # Same folder layout, but a weight with another shape: a different model config wrote it.
    other = tmp_path / "other"
    import shutil

    shutil.copytree(ckpt, other)
    weights = load_file(str(other / "model.safetensors"))
    weights["llama_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, str(other / "model.safetensors"))
    cfg = write_config(tmp_path, run={"resume_ckpt_path": str(other)}, name="other.yaml")
    with pytest.raises(CheckpointError, match="SHA-256"):
        train_in_process(cfg)


def test_ddp_two_processes_match_one_process(tmp_path):
    """torchrun with 2 gloo processes x batch 2 == 1 process x batch 4 (same global batches)."""
    single = write_config(tmp_path, run={"batch_size_train": 4, "job_id": "single", "max_epoch": 1})
    train_in_process(single)
    ddp = write_config(tmp_path, run={"batch_size_train": 2, "job_id": "ddp", "max_epoch": 1}, name="ddp.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "tests.train_support", "--cfg-path", str(ddp)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "backend gloo, rank 0 of 2" in out.stderr
    a, b = final_weights(tmp_path / "out" / "single"), final_weights(tmp_path / "out" / "ddp")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    la, lb = _losses(tmp_path / "out" / "single"), _losses(tmp_path / "out" / "ddp")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)
    assert _losses(tmp_path / "out" / "ddp", "valid")[6] == pytest.approx(_losses(tmp_path / "out" / "single",
                                                                                  "valid")[6], abs=1e-5)


def test_feature_cache_trains_like_the_images_and_refuses_augmentation(tmp_path):
    plain = write_config(tmp_path, run={"job_id": "plain", "max_epoch": 1}, dataset={"augment": False})
    cached = write_config(tmp_path, run={"job_id": "cached", "max_epoch": 1, "cache_visual_features": True,
                                         "cache_dir": str(tmp_path / "cache")},
                          dataset={"augment": False}, name="cached.yaml")
    train_in_process(plain)
    train_in_process(cached)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 24 + 8  # one per distinct image of the train and val splits
    la, lb = _losses(tmp_path / "out" / "plain"), _losses(tmp_path / "out" / "cached")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)
    va, vb = _losses(tmp_path / "out" / "plain", "valid"), _losses(tmp_path / "out" / "cached", "valid")
    assert va[6] == pytest.approx(vb[6], abs=1e-5)

    # A second run reuses the entries; other encoder weights get another fingerprint (another folder).
    before = {p.stat().st_mtime_ns for p in files}
    train_in_process(cached, "run.job_id=again")
    assert {p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")} == before
    from tests.train_support import StandInModel
    from xraygpt.runners.feature_cache import encoder_fingerprint

    torch.manual_seed(0)
    model = StandInModel()
    same = encoder_fingerprint(model)
    model.llama_proj.weight.data += 1  # trainable side: not part of the fingerprint
    assert encoder_fingerprint(model) == same
    model.encoder.weight.data[0, 0] += 1e-3
    assert encoder_fingerprint(model) != same

    from xraygpt.runners.feature_cache import FeatureCacheError

    augmented = write_config(tmp_path, run={"cache_visual_features": True, "cache_dir": str(tmp_path / "cache")},
                             dataset={"augment": True}, name="augmented.yaml")
    with pytest.raises(FeatureCacheError, match="allow_cache_with_augmentation"):
        train_in_process(augmented)
    with pytest.raises(FeatureCacheError, match="freeze_vit"):
        train_in_process(augmented, "model.train_encoder=true")
