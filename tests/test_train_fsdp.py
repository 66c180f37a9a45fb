"""run.strategy: fsdp (FSDP2 on gloo, CPU) and its sharded DCP checkpoints, on a tiny real MiniGPT-4.

The 2-process runs go through torchrun and train.py exactly as a user would (marked slow: each torchrun start
costs ~10 s of imports per process); one module-level set of runs serves several tests. The rest runs FSDP2
on a private 1-process gloo group inside pytest.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.fsdp_support import TINY_MODEL, write_config
from tests.train_support import train_in_process
from xraygpt.common import checkpointing as ckpt
from xraygpt.runners import distributed_checkpoint as dcp_ckpt

RUN = {"save_freq": 2, "keep_last_n": 0, "max_epoch": 2}  # 24 samples / global batch 4: 12 steps


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(config, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
            "-m", "tests.fsdp_support", "--cfg-path", str(config)]


def _losses(job_dir):
    rows = [json.loads(line) for line in (job_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process without FSDP (batch 4) and 2 FSDP processes (batch 2 each, activation checkpointing)."""
    root = tmp_path_factory.mktemp("fsdp")
    single = write_config(root, run={**RUN, "batch_size_train": 4, "job_id": "single"}, name="single.yaml")
    train_in_process(single)
    fsdp_cfg = {**RUN, "batch_size_train": 2, "strategy": "fsdp", "activation_checkpointing": True}
    reference = write_config(root, run={**fsdp_cfg, "job_id": "reference"}, name="reference.yaml")
    out = subprocess.run(_torchrun(reference), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return {"root": root, "out": root / "out", "fsdp_cfg": fsdp_cfg, "stderr": out.stderr}


@pytest.mark.slow  # torchrun: 2 gloo processes
def test_fsdp_two_processes_match_one_process(runs):
    """Full LLM unfrozen: 2 gloo processes x batch 2 under FSDP2 == 1 process x batch 4 without it."""
    assert "FSDP2: 2 decoder layers + root sharded over 2 process(es)" in runs["stderr"]
    assert "activation checkpointing: 2 decoder layers" in runs["stderr"]
    single, reference = runs["out"] / "single", runs["out"] / "reference"
    la, lb = _losses(single), _losses(reference)
    assert sorted(la) == list(range(1, 13)) and la.keys() == lb.keys()
    assert all(abs(la[k] - lb[k]) < 1e-5 for k in la), (la, lb)
    assert la[12] < la[1] - 0.3  # it learns
    from safetensors.torch import load_file

    full = load_file(str(reference / "model_best.safetensors"))  # gathered from the shards at the end
    assert any(k.startswith("llama_model.model.layers.1.mlp") for k in full)
    _assert_close(load_file(str(single / "model_best.safetensors")), full)
    step = reference / "checkpoints" / "step_00000012"
    assert sorted(p.name for p in (step / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (step / ckpt.WEIGHTS_FILE).exists()  # nobody gathered the model to save it


def _descendants(pid):
    """Child process ids, recursively (from /proc; torchrun puts its workers in their own sessions)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return [p for child in children for p in (child, *_descendants(child))]


def _kill_after(config, checkpoint, delay="0.4"):
    log = config.with_suffix(".log")
    with open(log, "w") as handle:
        proc = subprocess.Popen(_torchrun(config), cwd=REPO_ROOT, env=_env(TINY_STEP_DELAY=delay),
                                stdout=subprocess.DEVNULL, stderr=handle)
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    running = proc.poll() is None
    for pid in [proc.pid, *_descendants(proc.pid)]:  # torchrun and both workers, as a node failure would
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    assert running and checkpoint.exists(), log.read_text()[-3000:]
    assert not (checkpoint.parent / "step_00000012").exists()


@pytest.fixture(scope="module")
def killed(runs):
    """The reference FSDP run, SIGKILLed (all processes) after its step-4 checkpoint."""
    config = write_config(runs["root"], run={**runs["fsdp_cfg"], "job_id": "killed"}, name="killed.yaml")
    step4 = runs["out"] / "killed" / "checkpoints" / "step_00000004"
    _kill_after(config, step4)
    return step4


@pytest.mark.slow  # torchrun: 2 gloo processes
def test_resume_after_sigkill_same_world_size_is_bit_identical(runs, killed):
    assert [p.name for p in ckpt.list_checkpoints(killed.parent)][0] == "step_00000002"
    reference = runs["out"] / "reference"
    # Resumed with the frozen image side sharded as well: it is not in the checkpoint, and gathering it
    # gives the same weights, so this also checks fsdp_shard_frozen across 2 processes.
    resumed = write_config(runs["root"], run={**runs["fsdp_cfg"], "job_id": "resumed", "resume_ckpt_path": str(killed),
                                              "fsdp_shard_frozen": True}, name="resumed.yaml")
    out = subprocess.run(_torchrun(resumed), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from" in out.stderr and "frozen image side sharded" in out.stderr
    ref_w = dcp_ckpt.read_full_weights(reference / "checkpoints" / "step_00000012")
    res_w = dcp_ckpt.read_full_weights(runs["out"] / "resumed" / "checkpoints" / "step_00000012")
    assert ref_w.keys() == res_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], res_w[key]), key
    ref_l, res_l = _losses(reference), _losses(runs["out"] / "resumed")
    assert sorted(res_l) == list(range(5, 13)) and all(res_l[k] == ref_l[k] for k in res_l)


@pytest.mark.slow  # torchrun: 2 gloo processes
def test_resume_on_one_process_from_two(runs, killed):
    """2 -> 1 processes: the same weights at the resume point, then the same training (same global batch)."""
    reference = runs["out"] / "reference"
    at_kill = dcp_ckpt.read_full_weights(killed)
    for key, value in dcp_ckpt.read_full_weights(reference / "checkpoints" / "step_00000004").items():
        assert torch.equal(at_kill[key], value), key
    one = write_config(runs["root"], run={**runs["fsdp_cfg"], "batch_size_train": 4, "job_id": "one",
                                          "resume_ckpt_path": str(killed)}, name="one.yaml")
    state = train_in_process(one)
    assert state["global_step"] == 12
    ref_l, one_l = _losses(reference), _losses(runs["out"] / "one")
    assert sorted(one_l) == list(range(5, 13))
    assert abs(one_l[5] - ref_l[5]) < 1e-6  # the first step after resuming sees the checkpoint's weights
    assert all(abs(one_l[k] - ref_l[k]) < 1e-5 for k in one_l)
    _assert_close(dcp_ckpt.read_full_weights(runs["out"] / "one" / "checkpoints" / "step_00000012"),
                  dcp_ckpt.read_full_weights(reference / "checkpoints" / "step_00000012"))


@pytest.mark.slow  # torchrun: 2 gloo processes
def test_export_and_refusals(runs, tmp_path, capsys):
    step = runs["out"] / "reference" / "checkpoints" / "step_00000006"
    out, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    assert dcp_ckpt.main([str(step), "--out", str(out), "--original-pth", str(pth)]) == 0
    from safetensors.torch import load_file

    assert f"wrote {out}" in capsys.readouterr().out
    weights = load_file(str(out))
    original = torch.load(pth, weights_only=True)["model"]
    assert weights.keys() == original.keys() and "llama_proj.weight" in weights
    assert all(torch.equal(weights[k], original[k]) for k in weights)
    # The export loads as model.ckpt into the same architecture.
    from xraygpt.models.mini_gpt4 import MiniGPT4

    model = MiniGPT4.from_config({**TINY_MODEL, "arch": "mini_gpt4", "ckpt": str(out)})
    assert torch.equal(model.llama_proj.weight.detach(), weights["llama_proj.weight"])

    ddp_ckpt = runs["out"] / "single" / "checkpoints" / "step_00000004"
    cfg = write_config(tmp_path, run={**runs["fsdp_cfg"], "resume_ckpt_path": str(ddp_ckpt)})
    with pytest.raises(ckpt.CheckpointError, match="written with run.strategy: ddp"):
        train_in_process(cfg)
    lora = write_config(tmp_path, run={**runs["fsdp_cfg"], "resume_ckpt_path": str(step)}, name="lora.yaml",
                        model={"freeze_llm": True, "lora": {"r": 2, "target_modules": ["q_proj"]}})
    with pytest.raises(ckpt.CheckpointError, match="does not match this model's trainable weights"):
        train_in_process(lora)


# ------------------------------------------------------------ in one process (a private process group)
def _tiny_model(**overrides):
    from xraygpt.models.mini_gpt4 import MiniGPT4

    torch.manual_seed(0)
    return MiniGPT4.from_config({**TINY_MODEL, "arch": "mini_gpt4", **overrides})


def _batch():
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(2, 3, 8, 8, generator=generator), "prompt": ["describe", "describe"],
            "caption": ["left effusion", "heart normal"]}


@pytest.fixture
def sharding():
    """shard(model, **run keys) with FSDP2 on a private 1-process gloo group, torn down afterwards."""
    from xraygpt.common.dist_utils import DistInfo, cleanup_distributed
    from xraygpt.common.schema import RunConfig
    from xraygpt.runners import fsdp

    def shard(model, **run):
        cfg = RunConfig(task="image_text_pretrain", device="cpu", strategy="fsdp", **run)
        if cfg.activation_checkpointing:
            fsdp.checkpoint_decoder_layers(model)
        return fsdp.shard_model(model, cfg, DistInfo()), cfg

    yield shard
    cleanup_distributed()


def test_lora_with_fsdp_trains_and_saves_only_the_adapters(sharding, tmp_path):
    from xraygpt.common.optims import build_optimizer

    model, cfg = sharding(_tiny_model(freeze_llm=True, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]}))
    model.train()
    model(_batch())["loss"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert {n.split(".")[0] for n in with_grad} == {"llama_model", "llama_proj"}
    assert all("lora_" in n for n in with_grad if n.startswith("llama_model."))
    assert sum("lora_A" in n for n in with_grad) == 4  # q and v of 2 layers
    optimizer = build_optimizer(model, cfg)
    optimizer.step()
    folder = dcp_ckpt.save_sharded_checkpoint(tmp_path / "step_00000001", model, optimizer, training_state={},
                                              config_yaml="", meta={"global_step": 1}, is_main=True)
    saved = dcp_ckpt.read_full_weights(folder)
    assert set(saved) == trainable
    named = dict(model.named_parameters())
    assert all(torch.equal(saved[k], named[k].full_tensor().detach()) for k in saved)


def test_activation_checkpointing_recomputes_layers_under_fsdp(sharding):
    plain = _tiny_model()
    plain(_batch())["loss"].backward()
    calls = []
    model, _ = sharding(_tiny_model(), activation_checkpointing=True)
    from xraygpt.runners.fsdp import decoder_layers

    # A pre-hook: the non-reentrant recomputation stops early, once it has what the backward needs.
    decoder_layers(model)[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    model(_batch())["loss"].backward()
    assert len(calls) == 2  # the forward, and its recomputation in the backward
    for (name, p), q in zip(plain.named_parameters(), model.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_frozen_image_side_is_replicated_or_sharded(sharding):
    from torch.distributed.tensor import DTensor

    expected = _tiny_model()(_batch())["loss"]
    replicated, _ = sharding(_tiny_model())
    assert not isinstance(replicated.visual_encoder.vit.embeddings.patch_embedding.weight, DTensor)
    assert isinstance(replicated.llama_proj.weight, DTensor)
    torch.testing.assert_close(replicated(_batch())["loss"], expected)
    sharded, _ = sharding(_tiny_model(), fsdp_shard_frozen=True)
    assert isinstance(sharded.visual_encoder.vit.embeddings.patch_embedding.weight, DTensor)
    assert isinstance(sharded.qformer.layernorm.weight, DTensor)
    torch.testing.assert_close(sharded(_batch())["loss"], expected)


def test_interrupted_sharded_save_leaves_the_last_checkpoint_loadable(sharding, tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from xraygpt.common.optims import build_optimizer

    model, cfg = sharding(_tiny_model())
    optimizer = build_optimizer(model, cfg)
    good = dcp_ckpt.save_sharded_checkpoint(tmp_path / "step_00000001", model, optimizer, training_state={"x": 1},
                                            config_yaml="", meta={"global_step": 1}, is_main=True)
    real_save = dcp.save

    def dies_midway(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)  # shards on disk, meta.json not yet
        raise SystemExit("killed")

    monkeypatch.setattr(dcp, "save", dies_midway)
    with pytest.raises(SystemExit):
        dcp_ckpt.save_sharded_checkpoint(tmp_path / "step_00000002", model, optimizer, training_state={},
                                         config_yaml="", meta={"global_step": 2}, is_main=True)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
    assert dcp_ckpt.load_sharded_checkpoint(good, model, optimizer)["x"] == 1
    assert ckpt.remove_stale_temporaries(tmp_path) == 1
    (good / "dcp" / "__0_0.distcp").write_bytes(b"truncated")
    with pytest.raises(ckpt.CheckpointError, match="has another size"):
        dcp_ckpt.load_sharded_checkpoint(good, model, optimizer)


def test_one_process_fsdp_validates_and_generates_like_ddp(tmp_path):
    """FSDP on one process (a plain `python train.py`): same losses, validation and generated-text scores."""
    run = {"valid_splits": ["val"], "valid_generate": 2, "valid_max_new_tokens": 4, "iters_per_epoch": 3}
    for strategy in ("ddp", "fsdp"):
        train_in_process(write_config(tmp_path, run={**run, "strategy": strategy, "job_id": strategy}, name=f"{strategy}.yaml"))

    def records(job):
        rows = [json.loads(line) for line in (tmp_path / "out" / job / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in rows if r["kind"] != "checkpoint"]

    ddp, fsdp = records("ddp"), records("fsdp")
    valid = [r for r in fsdp if r["kind"] == "valid"]
    assert valid and "BLEU-1" in valid[0]
    assert len(ddp) == len(fsdp)
    for a, b in zip(ddp, fsdp):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.mark.gpu
def test_fsdp_on_a_gpu_trains_in_bf16_close_to_fp32(tmp_path):
    """The GPU defaults: bf16 gathered weights, fp32 reduction, fused AdamW, NCCL on a private 1-process group."""
    run = {"device": "cuda", "iters_per_epoch": 6, "strategy": "fsdp", "activation_checkpointing": True}
    train_in_process(write_config(tmp_path, run={**run, "job_id": "bf16"}, name="bf16.yaml"))
    train_in_process(write_config(tmp_path, run={**run, "job_id": "fp32", "fsdp_param_dtype": "fp32"}, name="fp32.yaml"))
    bf16, fp32 = _losses(tmp_path / "out" / "bf16"), _losses(tmp_path / "out" / "fp32")
    assert bf16.keys() == fp32.keys() == set(range(1, 7))
    assert all(abs(bf16[k] - fp32[k]) < 0.05 * fp32[k] for k in bf16)
    rows = [json.loads(line) for line in (tmp_path / "out" / "bf16" / "log.jsonl").read_text().splitlines()]
    assert all(r["peak_memory_gib"] > 0 for r in rows if r["kind"] == "train")


@pytest.mark.slow  # torchrun: 2 gloo processes
def test_lora_on_two_fsdp_processes_matches_one_process(tmp_path):
    """LoRA under FSDP2 on 2 processes: adapters (and llama_proj) only in the checkpoint, weights as 1 process."""
    lora = {"freeze_llm": True, "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
    run = {"iters_per_epoch": 4}
    single = write_config(tmp_path, run={**run, "batch_size_train": 4, "job_id": "single"}, model=lora, name="one.yaml")
    train_in_process(single)
    sharded = write_config(tmp_path, run={**run, "batch_size_train": 2, "job_id": "fsdp", "strategy": "fsdp"},
                           model=lora, name="two.yaml")
    out = subprocess.run(_torchrun(sharded), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    step = tmp_path / "out" / "fsdp" / "checkpoints" / "step_00000004"
    keys = ckpt.read_meta(step)["trainable_keys"]
    assert sum("lora_A" in k for k in keys) == 4 and all("lora_" in k or k.startswith("llama_proj.") for k in keys)
    from safetensors.torch import load_file

    _assert_close(load_file(str(tmp_path / "out" / "single" / "model_best.safetensors")), dcp_ckpt.read_full_weights(step))
    la, lb = _losses(tmp_path / "out" / "single"), _losses(tmp_path / "out" / "fsdp")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)
