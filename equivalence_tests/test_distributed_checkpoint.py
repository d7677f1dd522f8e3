"""torch.distributed.checkpoint's optimizer state dict round trip (issue 24), every class of both packages.

DCP's `get_optimizer_state_dict` and `set_optimizer_state_dict` treat an empty `optimizer.state` as "not
initialised" and take a step with zero gradients and lr 0 to create it; the family's LR mask does not follow
lr, so that step moved the parameters and advanced the step counters at every save. `optimizer.state` now holds
real state (or placeholders before the first step), so a save changes nothing and a load resumes exactly."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from .cases.contract import PACKAGES, WARMED
from .differential import CLASSES


def model_and_optimizer(package, name, compat):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, getattr(package, name)(model.parameters(), lr=1e-3, compat=compat, **WARMED[name])


def train(model, opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()


def snapshot(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("stop", [0, 3])  # a never-stepped optimizer, and one in warm-up
@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_dcp_round_trip_is_exact_and_the_save_changes_nothing(package, name, compat, stop):
    straight_model, straight = model_and_optimizer(package, name, compat)
    train(straight_model, straight, stop, seed=1)
    before = snapshot(straight_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = get_optimizer_state_dict(straight_model, straight)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(straight_model), strict=True))
    if stop == 0:  # no step was taken to create state (HinaAdamW's SPD anchors exist from construction)
        assert not any("step" in entry for entry in saved["state"].values())
    buffer = io.BytesIO()  # as a checkpoint on disk: the saved tensors are not the optimizer's own
    torch.save(saved, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_model, resumed = model_and_optimizer(package, name, compat)
    resumed_model.load_state_dict(straight_model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        set_optimizer_state_dict(resumed_model, resumed, saved)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(resumed_model), strict=True))
    train(straight_model, straight, 4, seed=2)
    train(resumed_model, resumed, 4, seed=2)
    for a, b in zip(snapshot(straight_model), snapshot(resumed_model), strict=True):
        assert torch.equal(a, b)
