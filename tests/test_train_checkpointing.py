"""Atomic checkpoints: round trip, RNG state, corrupt/foreign inputs, a kill in the middle of a save."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT
from xraygpt.common import checkpointing as ckpt


def _save(folder, value=1.0, step=1):
    return ckpt.save_checkpoint(
        folder,
        weights={"proj.weight": torch.full((2, 3), value)},
        training_state={"counters": {"global_step": step}, "rng": ckpt.capture_rng_state()},
        config_yaml="run: {}\n",
        meta={"global_step": step},
    )


def test_round_trip_and_listing(tmp_path):
    _save(tmp_path / "step_2", 2.0, step=2)
    _save(tmp_path / "step_1", 1.0, step=1)
    loaded = ckpt.load_checkpoint(tmp_path / "step_2")
    assert torch.equal(loaded["weights"]["proj.weight"], torch.full((2, 3), 2.0))
    assert loaded["training_state"]["counters"]["global_step"] == 2
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_1", "step_2"]
    with pytest.raises(ckpt.CheckpointError, match="refusing to overwrite"):
        _save(tmp_path / "step_2")


def test_rng_state_restores_every_stream():
    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_rng_state_survives_a_save_load(tmp_path):
    folder = _save(tmp_path / "ckpt")
    expected = torch.rand(3)
    ckpt.restore_rng_state(ckpt.load_checkpoint(folder)["training_state"]["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    folder = _save(tmp_path / "good")
    weights = folder / ckpt.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match its SHA-256"):
        ckpt.load_checkpoint(folder)

    original = tmp_path / "minigpt4_stage2.pth"
    torch.save({"model": {"llama_proj.weight": torch.zeros(1)}}, original)
    with pytest.raises(ckpt.CheckpointError, match="set model.ckpt instead"):
        ckpt.load_checkpoint(original)

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / ckpt.META_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ckpt.CheckpointError, match="not an xraygpt training checkpoint"):
        ckpt.load_checkpoint(stranger)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "absent")


def test_sigkill_during_save_leaves_previous_checkpoint_valid(tmp_path):
    """A process killed while writing checkpoint 2 leaves checkpoint 1 intact and no valid-looking 2."""
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        from xraygpt.common import checkpointing as ckpt
        from tests.test_train_checkpointing import _save
        root = {str(tmp_path)!r}
        _save(root + "/step_1", 1.0, step=1)
        real_save = torch.save
        def slow_save(obj, path):
            real_save(obj, path)           # training_state.pt is on disk, meta.json not yet
            print("IN_SAVE", flush=True)
            time.sleep(60)
        ckpt.torch.save = slow_save
        _save(root + "/step_2", 2.0, step=2)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "IN_SAVE"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "step_2").exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_1"]
    assert torch.equal(ckpt.load_checkpoint(tmp_path / "step_1")["weights"]["proj.weight"], torch.ones(2, 3))
    assert ckpt.remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]
