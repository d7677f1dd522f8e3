"""torch.optim's contract for a third-party optimizer (issue 24), every class of both packages: what torch and its
ecosystem do with an optimizer keeps working. This module grows with that issue; today: deepcopy and pickle,
and Tensor hyper-parameters."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

import optimized
import reference

from .differential import CLASSES

PACKAGES = [reference, optimized]
WARMED = {name: ({} if name == "HinaAdamWOptimizer" else {"warmup_steps": 4}) for name in CLASSES}


def named_params() -> list[tuple[str, torch.nn.Parameter]]:
    """A LoRA pair (HinaAdamW and the Improved classes treat them by name), a matrix and a vector."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"unet.a.lora_down.weight": (2, 6), "unet.a.lora_up.weight": (5, 2), "unet.b.weight": (4, 6),
              "unet.b.bias": (4,)}  # fmt: skip
    return [(n, torch.nn.Parameter(torch.randn(s, generator=gen))) for n, s in shapes.items()]


def build(package, name, compat):
    named = named_params()
    group = {"params": [p for _, p in named], "param_names": [n for n, _ in named]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(package, name)([group], compat=compat, **WARMED[name])


def params_of(opt) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def run(opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params_of(opt):
            p.grad = torch.randn(p.shape, generator=gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()


def pickled(opt):
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_copy_steps_as_the_original(package, name, compat, how):
    """torch's `Optimizer.__getstate__` keeps only defaults, state and param_groups; the family's settings and
    the fast path's buffers are attributes too, so a copy could not step (AttributeError), and HinaAdamW's LoRA
    roles, keyed by id(p), would have been lost on the copy's new parameters. A copy (with its own parameters, as
    torch's copies have) continues exactly as the original does, and shares no tensor with it."""
    opt = build(package, name, compat)
    run(opt, 3, seed=1)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickled(opt)
    assert not any(a is b or a.data_ptr() == b.data_ptr() for a, b in zip(params_of(opt), params_of(twin), strict=True))
    run(opt, 3, seed=2)
    run(twin, 3, seed=2)
    for a, b in zip(params_of(opt), params_of(twin), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_tensor_lr_is_a_clear_value_error(package, name):
    """A Tensor lr gave a TypeError ("must be a real number"); torch's optimizers answer a Tensor lr they do not
    support with a ValueError, and so do these, naming the argument."""
    params = [torch.nn.Parameter(torch.randn(4, 5))]
    with pytest.raises(ValueError, match="lr"):
        getattr(package, name)(params, lr=torch.tensor(1e-3))


@pytest.mark.parametrize("name", [n for n in CLASSES if n != "HinaAdamWOptimizer"])
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_lr_clamped_by_max_lr_warns_once(package, name):
    """An lr above max_lr trained at max_lr without a word (the LR mask is clamped); now one warning says so, and a
    second such group does not repeat it."""
    params = [torch.nn.Parameter(torch.randn(4, 5))]
    with pytest.warns(UserWarning, match="max_lr") as caught:
        opt = getattr(package, name)(params, lr=1e-2, max_lr=1e-3, compat="fixed")
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "lr": 2e-2})
    assert sum("max_lr" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(package, name)([torch.nn.Parameter(torch.randn(4, 5))], lr=1e-3, max_lr=1e-3, compat="fixed")
