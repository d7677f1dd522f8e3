"""torch's OneCycleLR writes its schedule's bounds into every param group as group["max_lr"] and group["min_lr"]
(= initial_lr / final_div_factor), the keys that hold the LR mask's clamp in the corrected mode [I-25]: the
mask's bounds moved without a word (1e-7..1e-3 became 8e-9..2e-3 for OneCycleLR(max_lr=2e-3)). The first step
after such a change now warns; a resumed run does not warn again, and resumes bit for bit."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from .cases.contract import PACKAGES
from .differential import CLASSES, COMPATS

UNCLAMPED = ("Automagic_CameAMP_Improved_8Bit", "HinaAdamWOptimizer")  # these clamp no LR mask to the bounds
SHAPES = ((6, 4), (4,))
STEPS = 6  # W = 4: steps in the warm-up and after it


def build(package, name: str, compat: str, params):
    kwargs = {"lr": 1e-4, "compat": compat}
    if name != "HinaAdamWOptimizer":
        kwargs["warmup_steps"] = STEPS - 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = getattr(package, name)(params, **kwargs)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=4 * STEPS)


def step(opt, scheduler, params, t: int) -> list[str]:
    """One training step at step count `t`; returns the warnings about the mask's bounds."""
    gen = torch.Generator().manual_seed(t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
        scheduler.step()
    return [str(w.message) for w in caught if "min_lr, max_lr" in str(w.message)]


def fresh_params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(1)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in SHAPES]


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_one_cycle_lr_moving_the_mask_bounds_warns_once(package, name, compat):
    params = fresh_params()
    opt, scheduler = build(package, name, compat, params)
    told = [step(opt, scheduler, params, t) for t in range(STEPS)]
    clamped = compat == "fixed" and name not in UNCLAMPED  # upstream clamps to the constructor's bounds
    assert [len(messages) for messages in told] == [int(clamped)] + [0] * (STEPS - 1)
    if clamped:
        assert "(1e-07, 0.001) to (8e-09, 0.002)" in told[0][0]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_a_run_resumed_under_one_cycle_lr_does_not_warn_and_steps_the_same(package, name):
    """The order HF Trainer resumes in: optimizer, scheduler (which writes its bounds again), then both
    state dicts."""
    params = fresh_params()
    opt, scheduler = build(package, name, "fixed", params)
    for t in range(STEPS // 2):
        step(opt, scheduler, params, t)
    saved = copy.deepcopy((opt.state_dict(), scheduler.state_dict()))
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed, resumed_scheduler = build(package, name, "fixed", resumed_params)
    resumed.load_state_dict(saved[0])
    resumed_scheduler.load_state_dict(saved[1])
    for t in range(STEPS // 2, STEPS):
        step(opt, scheduler, params, t)
        assert step(resumed, resumed_scheduler, resumed_params, t) == []
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params, strict=True))
