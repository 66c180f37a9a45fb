"""Learning-rate schedules at chosen steps, and AdamW parameter groups."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from xraygpt.common.optims import LinearWarmupCosineLR, LinearWarmupStepLR, build_optimizer, build_scheduler
from xraygpt.common.registry import registry


def _lrs(scheduler, optimizer, steps):
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def _optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0)


def test_warmup_cosine_values():
    opt = _optimizer()
    sched = LinearWarmupCosineLR(opt, total_steps=12, init_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=2)
    lrs = _lrs(sched, opt, 14)
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[1] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lrs[2] == pytest.approx(1e-3)  # warm-up over, cosine starts at init_lr
    assert lrs[7] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[12] == pytest.approx(1e-5) and lrs[13] == pytest.approx(1e-5)  # floor after the end


def test_warmup_step_values():
    opt = _optimizer()
    sched = LinearWarmupStepLR(opt, iters_per_epoch=5, init_lr=1e-2, min_lr=2e-3, decay_rate=0.5,
                               warmup_lr=0.0, warmup_steps=4)
    lrs = _lrs(sched, opt, 16)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(5e-3)
    assert lrs[4] == pytest.approx(1e-2)  # epoch 0 after warm-up
    assert lrs[5] == pytest.approx(5e-3)  # epoch 1
    assert lrs[10] == pytest.approx(2.5e-3)  # epoch 2
    assert lrs[15] == pytest.approx(2e-3)  # epoch 3: 1.25e-3 floored at min_lr


def test_scheduler_state_round_trip_continues_identically():
    opt = _optimizer()
    sched = LinearWarmupCosineLR(opt, total_steps=20, init_lr=1e-3, min_lr=0.0, warmup_steps=3)
    _lrs(sched, opt, 7)
    saved = sched.state_dict()
    expected = _lrs(sched, opt, 5)
    opt2 = _optimizer()
    sched2 = LinearWarmupCosineLR(opt2, total_steps=20, init_lr=1e-3, min_lr=0.0, warmup_steps=3)
    sched2.load_state_dict(saved)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert _lrs(sched2, opt2, 5) == expected


def test_registered_names_and_step_lr_needs_decay_rate():
    assert registry.get_lr_scheduler_class("linear_warmup_cosine_lr") is LinearWarmupCosineLR
    run = OmegaConf.create({"lr_sched": "linear_warmup_step_lr", "lr_decay_rate": None, "init_lr": 1e-3,
                            "min_lr": 0.0, "warmup_lr": 0.0, "warmup_steps": 0, "max_epoch": 1})
    with pytest.raises(ValueError, match="lr_decay_rate"):
        build_scheduler(_optimizer(), run, 10)


def test_optimizer_groups_skip_frozen_and_decay_only_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].requires_grad_(False)
    opt = build_optimizer(model, OmegaConf.create({"weight_decay": 0.05, "init_lr": 1e-3}))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    assert plain == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_no_trainable_parameters_is_a_clear_error():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OmegaConf.create({"weight_decay": 0.0, "init_lr": 1e-3}))
