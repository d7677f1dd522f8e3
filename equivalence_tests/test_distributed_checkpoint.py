"""torch.distributed.checkpoint's optimizer state dict round trip (issues 24, 26), every class of both packages,
by the three ways users resume.

DCP's `get_optimizer_state_dict` and `set_optimizer_state_dict` treat an empty `optimizer.state` as "not
initialised" and take a step with zero gradients and lr 0 to create it; the family's LR mask does not follow
lr, so that step moved the parameters and advanced the step counters at every save. `optimizer.state` holds an
entry for every parameter from construction, so a save changes nothing. `dcp.load` and the full-state-dict
load read a checkpoint into the fresh optimizer's own state dict, so every saved entry has one layout at every
step (reference.checkpoint_layout): before this, such a resume silently restarted the optimizer's state
("Expected device to be set" with full_state_dict=True)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from .cases.contract import PACKAGES, WARMED
from .differential import CLASSES
from .harness import roundtrip


def model_and_optimizer(package, name, compat, dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, getattr(package, name)(model.parameters(), lr=1e-3, compat=compat, **WARMED[name])


def train(model, opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen).to(next(model.parameters()).dtype)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # C-Optim's context (its histories, optimizer-wide state) is fed by the loss
            opt.step(loss=float(loss)) if "COptim" in type(opt).__name__ else opt.step()


def snapshot(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def saved_and_resumed(straight_model, straight, package, name, compat, dtype, route, path):
    """The optimizer's checkpoint taken by `route` and resumed into a fresh optimizer over a copy of the model.

    `torch.save`: `get_optimizer_state_dict` written with torch.save, loaded with weights_only, then
    `set_optimizer_state_dict` (default options); `dcp`: `dcp.save`, then the fresh optimizer's own state dict
    as `dcp.load`'s template (how accelerate and torchtitan resume); `full`: both sides with
    full_state_dict=True."""
    options = StateDictOptions(full_state_dict=True) if route == "full" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = get_optimizer_state_dict(straight_model, straight, options=options)
        if route == "dcp":
            dcp.save({"optimizer": saved}, checkpoint_id=path)
        else:  # as a checkpoint on disk: the saved tensors are not the optimizer's own
            saved = roundtrip(saved)
        resumed_model, resumed = model_and_optimizer(package, name, compat, dtype)
        resumed_model.load_state_dict(straight_model.state_dict())
        if route == "dcp":
            template = {"optimizer": get_optimizer_state_dict(resumed_model, resumed)}
            dcp.load(template, checkpoint_id=path)
            saved = template["optimizer"]
        set_optimizer_state_dict(resumed_model, resumed, saved, options=options)
    return resumed_model, resumed


# a never-stepped optimizer, one in warm-up (W = 4; upstream bf16 too: its dtypes move at the first step) and
# one past W, where the warm-up state is gone
CASES = [(0, torch.float32), (3, torch.float32), (6, torch.float32), (3, torch.bfloat16)]


@pytest.mark.parametrize("route", ["torch.save", "dcp", "full"])
@pytest.mark.parametrize(("stop", "dtype"), CASES, ids=lambda c: str(c).removeprefix("torch."))
@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_dcp_round_trip_is_exact_and_the_save_changes_nothing(package, name, compat, stop, dtype, route, tmp_path):
    straight_model, straight = model_and_optimizer(package, name, compat, dtype)
    train(straight_model, straight, stop, seed=1)
    before = snapshot(straight_model)
    steps = [entry.get("step") for entry in straight.state.values()]
    resumed_model, resumed = saved_and_resumed(straight_model, straight, package, name, compat, dtype, route, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(straight_model), strict=True))
    assert [entry.get("step") for entry in straight.state.values()] == steps  # no step was taken to save
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(resumed_model), strict=True))
    assert [entry.get("step") for entry in resumed.state.values()] == steps
    train(straight_model, straight, 4, seed=2)
    train(resumed_model, resumed, 4, seed=2)
    for a, b in zip(snapshot(straight_model), snapshot(resumed_model), strict=True):
        assert torch.equal(a, b)
