"""Bad input, missing gradients and odd parameters: a clear error or a correct step, never silent damage."""

import pytest
import torch

import optimized
import reference

from .tolerances import FREE_RUNNING_FP32, scaled_error

IMPLEMENTATIONS = [reference.Automagic_CameAMP, optimized.Automagic_CameAMP]
ids = ["reference", "optimized"]


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=ids)
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": -1.0}, "lr"),
        ({"min_lr": 1e-2, "max_lr": 1e-3}, "min_lr"),
        ({"betas": (0.9, 1.0, 0.9)}, "betas"),
        ({"betas": (0.9, 0.9)}, "betas"),
        ({"eps": (1e-30, -1.0, 1e-8)}, "eps"),
        ({"clip_threshold": 0.0}, "clip_threshold"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 2.5}, "warmup_steps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"eta": 0}, "eta"),
        ({"compat": "newest"}, "compat"),
        ({"beta1_decay": 1.5}, "beta1_decay"),
        ({"lr_bump": float("nan")}, "lr_bump"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(cls, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cls([torch.nn.Parameter(torch.randn(3))], **kwargs)


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=ids)
def test_unknown_kwarg_is_a_type_error(cls):
    with pytest.raises(TypeError):
        cls([torch.nn.Parameter(torch.randn(3))], lr_bumpp=1e-6)


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=ids)
def test_sparse_and_complex_are_refused_before_any_state_changes(cls):
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = cls([p], lr=1e-3)
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert not any(opt.state.values())  # placeholders only: no parameter has state
    assert all(entry["step"] == 0 for entry in opt.state_dict()["state"].values())  # saved as not started
    c = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = cls([c], lr=1e-3)
    c.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        opt.step()


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=ids)
def test_missing_gradients_empty_groups_and_zero_size(cls):
    a, b = torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(7))
    empty = torch.nn.Parameter(torch.randn(0, 3))
    opt = cls([{"params": [a, b, empty]}, {"params": []}], lr=1e-3, warmup_steps=6, came=False)
    b_before = b.detach().clone()
    opt.step()  # no gradient anywhere: nothing happens
    assert not any(opt.state.values())  # placeholders only: no parameter has state
    assert all(entry["step"] == 0 for entry in opt.state_dict()["state"].values())  # saved as not started
    a.grad = torch.randn(5, 4)
    empty.grad = torch.randn(0, 3)
    opt.step()
    state = opt.state_dict()["state"]
    assert {pid for pid, entry in state.items() if entry["step"]} == {0} and state[0]["step"] == 1
    assert torch.equal(b.detach(), b_before)


def test_missing_gradients_match_between_implementations():
    """A parameter without a gradient is skipped (its counter does not advance) identically."""

    def run(cls):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((6, 5), (9,), (3, 3))]
        opt = cls(params, lr=1e-3, warmup_steps=6)
        for t in range(10):
            for i, p in enumerate(params):
                p.grad = None if (i == 1 and t % 3 == 0) else torch.randn(p.shape, generator=gen)
            opt.step()
        return params, opt.state_dict()

    ref_params, ref_sd = run(reference.Automagic_CameAMP)
    opt_params, opt_sd = run(optimized.Automagic_CameAMP)
    assert ref_sd["state"][1]["step"] == opt_sd["state"][1]["step"] == 6
    for a, b in zip(ref_params, opt_params, strict=True):
        assert scaled_error(a, b) <= FREE_RUNNING_FP32.bound


def test_param_groups_with_their_own_lr_and_a_scheduler():
    def run(cls):
        gen = torch.Generator().manual_seed(1)
        p1 = torch.nn.Parameter(torch.randn(8, 6, generator=gen))
        p2 = torch.nn.Parameter(torch.randn(10, generator=gen))
        opt = cls([{"params": [p1], "lr": 2e-4}, {"params": [p2], "lr": 5e-5}], lr=1e-4, warmup_steps=8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
        for _ in range(18):
            for p in (p1, p2):
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            sched.step()
        return (p1, p2)

    for a, b in zip(run(reference.Automagic_CameAMP), run(optimized.Automagic_CameAMP), strict=True):
        assert scaled_error(a, b) <= FREE_RUNNING_FP32.bound


def test_gradients_kept_between_steps_accumulate_in_place():
    """zero_grad(set_to_none=False) + backward writes into the optimizer's gradient buffer; the results
    equal those of fresh gradients (set_to_none=True)."""

    def run(set_to_none):
        torch.manual_seed(2)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
        opt = optimized.Automagic_CameAMP(model.parameters(), lr=1e-3, warmup_steps=4)
        x, y = torch.randn(32, 6), torch.randn(32, 1)
        for _ in range(8):
            opt.zero_grad(set_to_none=set_to_none)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False), strict=True):
        assert torch.equal(a, b)


def test_replaced_parameter_data_is_adopted_or_refused():
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = optimized.Automagic_CameAMP([p], lr=1e-3, came=False)
    p.grad = torch.randn(4, 4)
    opt.step()
    p.data = torch.zeros(4, 4)  # same shape and dtype: the optimizer takes the new values
    p.grad = torch.randn(4, 4)
    opt.step()
    assert float(p.detach().abs().max()) < 0.1
    p.data = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        opt.step()


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=ids)
def test_closure_loss_is_returned_with_grad_enabled(cls):
    p = torch.nn.Parameter(torch.randn(3))
    opt = cls([p], lr=1e-3)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and float(loss) > 0
