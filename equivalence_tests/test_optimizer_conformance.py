"""torch's optimizer conformance checks, on torch's own `OptimizerInfo`, for every class of both packages (issue 24).

torch describes each of its optimizers by an `OptimizerInfo` (constructor inputs, error inputs, what it supports)
and runs `TestOptimRenewed` over them. `INFOS` describes ours the same way, and the tests below are the checks of
`TestOptimRenewed` that apply to a third-party, CPU-and-CUDA, non-foreach optimizer, written for pytest. What does
not apply is in `NOT_APPLICABLE`, with the reason, and is not generated.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
)

import optimized
import reference

from .differential import CLASSES

AUTOMAGIC = [n for n in CLASSES if n != "HinaAdamWOptimizer"]

NOT_APPLICABLE = {
    # (test, classes): reason
    ("test_param_groups_lr", tuple(AUTOMAGIC)): "lr = 0 does not freeze a group: the LR mask (T8) is adaptive and "
    "clamped to [min_lr, max_lr], so the step size does not follow lr (HinaAdamW, an AdamW, is checked)",
    ("test_foreach_and_fused", tuple(CLASSES)): "no foreach/fused flags: the fast path is one compiled code path",
    ("test_complex", tuple(CLASSES)): "complex parameters are refused with a TypeError (test_robustness.py)",
    ("test_sparse", tuple(CLASSES)): "sparse gradients are refused with a TypeError (test_robustness.py)",
    ("test_capturable", tuple(CLASSES)): "no capturable flag: no host syncs per parameter by construction",
}


def _inputs(name: str):
    warm = {} if name == "HinaAdamWOptimizer" else {"warmup_steps": 4}

    def optim_inputs(device=None, dtype=None):
        return [
            OptimizerInput(params=None, kwargs={**warm}, desc="default (compat='fixed')"),
            OptimizerInput(params=None, kwargs={**warm, "compat": "upstream"}, desc="upstream"),
            OptimizerInput(params=None, kwargs={**warm, "weight_decay": 0.1, "lr": 3e-3}, desc="weight_decay, lr"),
        ]

    return optim_inputs


def _error_inputs(device=None, dtype=None):
    def construction(kwargs, error_type, regex):
        return ErrorOptimizerInput(OptimizerInput(params=None, kwargs=kwargs), error_type=error_type, error_regex=regex)

    return [
        construction({"lr": -1.0}, ValueError, "lr"),
        construction({"lr": torch.tensor(1e-3)}, ValueError, "lr"),
        construction({"weight_decay": -1.0}, ValueError, "weight_decay"),
        construction({"compat": "bogus"}, ValueError, "compat"),
        construction({"nonfinite": "ignore"}, ValueError, "nonfinite"),
        ErrorOptimizerInput(
            OptimizerInput(params=None, kwargs={}, desc="a gradient holding NaN"),
            error_on=OptimizerErrorEnum.STEP_ERROR,
            error_type=ValueError,
            error_regex="NaN|finite",
        ),
    ]


INFOS = [
    OptimizerInfo(
        getattr(package, name),
        optim_inputs_func=_inputs(name),
        optim_error_inputs_func=_error_inputs,
        supported_impls=(),
        not_og_supported_flags=(),
        supports_sparse=False,
        supports_complex=False,
        supports_fused_on=(),
    )
    for package in (reference, optimized)
    for name in CLASSES
]


def info_id(info) -> str:
    return f"{info.optim_cls.__module__.split('.')[0]}.{info.name}"


def applies(test: str, info) -> bool:
    return not any(test == t and info.name in names for (t, names) in NOT_APPLICABLE)


def infos_for(test: str):
    return pytest.mark.parametrize("info", [i for i in INFOS if applies(test, i)], ids=info_id)


def params_for(dtype=torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in ((5, 4), (4,), (3, 2, 2))]


def make(info, inp, params, **extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return info.optim_cls(params, **{**inp.kwargs, **extra})


def quiet_step(opt, closure=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return opt.step(closure)


def feed(params, gen) -> None:
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def stepped(info, inp, seed: int, steps: int):
    """(parameters, the gradient generator, an optimizer over them that took `steps` steps)."""
    params, gen = params_for(), torch.Generator().manual_seed(seed)
    opt = make(info, inp, params)
    for _ in range(steps):
        feed(params, gen)
        quiet_step(opt)
    return params, gen, opt


def each_input(info):
    return info.optim_inputs_func(device="cpu")


@infos_for("test_forloop_goes_right_direction")
def test_forloop_goes_right_direction(info):
    """A least-squares loss goes down over 40 steps, in every configuration with the fixed numerics (upstream's
    keep its 8-bit explosion on purpose; test_torch_contract.py checks that one)."""
    for inp in [i for i in each_input(info) if i.kwargs.get("compat", "fixed") == "fixed"]:
        gen = torch.Generator().manual_seed(1)
        w = torch.nn.Parameter(torch.randn(6, 3, generator=gen))
        x, y = torch.randn(32, 6, generator=gen), torch.randn(32, 3, generator=gen)
        opt = make(info, inp, [w], lr=1e-2) if "lr" not in inp.kwargs else make(info, inp, [w])
        closure = least_squares(opt, w, x, y)
        start = float(closure())
        for _ in range(40):
            quiet_step(opt, closure)
        assert float(closure()) < start, inp.desc


def least_squares(opt, w, x, y):
    def closure():
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        return loss

    return closure


@infos_for("test_errors")
def test_errors(info):
    for error in info.optim_error_inputs_func(device="cpu"):
        params = params_for()
        inp = error.optimizer_error_input
        if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type, match=error.error_regex):
                info.optim_cls(params, **inp.kwargs)
        else:
            opt = make(info, inp, params)
            for p in params:
                p.grad = torch.full_like(p, float("nan"))
            with pytest.raises(error.error_type, match=error.error_regex):
                opt.step()


@infos_for("test_state_dict_deterministic")
def test_state_dict_deterministic(info):
    """An optimizer loaded from another's state_dict (over copies of its parameters) steps as that one does, and
    their state_dicts agree at every step; the closure's loss is returned."""
    for inp in each_input(info):
        params, gen, opt = stepped(info, inp, seed=2, steps=3)
        twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
        twin = make(info, inp, twins)
        twin.load_state_dict(copy.deepcopy(opt.state_dict()))
        for _ in range(3):
            state = gen.get_state()
            feed(params, gen)
            gen.set_state(state)
            feed(twins, gen)
            assert quiet_step(opt, lambda: torch.tensor(1.5)) == torch.tensor(1.5)
            quiet_step(twin)
            assert all(torch.equal(a, b) for a, b in zip(params, twins, strict=True)), inp.desc


@infos_for("test_deepcopy_copies_all_public_attrs")
def test_deepcopy_copies_all_public_attrs(info):
    for inp in each_input(info):
        params, gen = params_for(), torch.Generator().manual_seed(3)
        opt = make(info, inp, params)
        feed(params, gen)
        quiet_step(opt)
        twin = copy.deepcopy(opt)
        public = {k for k in vars(opt) if not k.startswith("_")}
        assert public <= set(vars(twin)), inp.desc


@infos_for("test_step_hooks")
def test_step_hooks(info):
    """Step pre- and post-hooks, the optimizer's own and torch's global ones, run once per step in order."""
    calls = []
    params, gen = params_for(), torch.Generator().manual_seed(4)
    opt = make(info, each_input(info)[0], params)
    handles = [
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre")),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post")),
        register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append("global pre")),
        register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append("global post")),
    ]
    try:
        for _ in range(2):
            feed(params, gen)
            quiet_step(opt)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["global pre", "pre", "post", "global post"] * 2


@infos_for("test_save_load_equality_with_weights_only")
def test_save_load_equality_with_weights_only(info):
    for inp in each_input(info):
        params, _, opt = stepped(info, inp, seed=5, steps=2)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        again = make(info, inp, [torch.nn.Parameter(p.detach().clone()) for p in params])
        again.load_state_dict(loaded)
        a, b = opt.state_dict(), again.state_dict()
        assert a["state"].keys() == b["state"].keys()
        for pid, entry in a["state"].items():
            for key, value in entry.items():
                other = b["state"][pid][key]
                assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (inp.desc, key)


@infos_for("test_can_load_a_tensor_step")
def test_can_load_a_tensor_step(info):
    """torch's optimizers save `step` as a tensor; a checkpoint with tensor steps loads and resumes exactly."""
    inp = each_input(info)[0]
    params, gen, opt = stepped(info, inp, seed=6, steps=2)
    sd = copy.deepcopy(opt.state_dict())
    for entry in sd["state"].values():
        if "step" in entry:
            entry["step"] = torch.tensor(float(entry["step"]))
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = make(info, inp, twins)
    twin.load_state_dict(sd)
    state = gen.get_state()
    feed(params, gen)
    gen.set_state(state)
    feed(twins, gen)
    quiet_step(opt)
    quiet_step(twin)
    assert all(torch.equal(a, b) for a, b in zip(params, twins, strict=True))


@infos_for("test_param_groups_weight_decay")
def test_param_groups_weight_decay(info):
    """A group's own weight_decay is used: the same gradients move a group with decay differently from one
    without, and a group without decay as the optimizer without decay does. (The Automagic family decays while
    t < W/2 only, and θ does not move at t = 1, so W is 20 here.)"""
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(5, 4, generator=gen) for _ in range(3)]
    inp = each_input(info)[0]
    if "warmup_steps" in inp.kwargs:
        inp = OptimizerInput(params=None, kwargs={**inp.kwargs, "warmup_steps": 20}, desc=inp.desc)

    def run(groups_decay):
        ps = [torch.nn.Parameter(torch.ones(5, 4)) for _ in groups_decay]
        opt = make(info, inp, [{"params": [p], "weight_decay": wd} for p, wd in zip(ps, groups_decay, strict=True)])
        for g in grads:
            for p in ps:
                p.grad = g.clone()
            quiet_step(opt)
        return [p.detach() for p in ps]

    with_decay, without = run([0.3, 0.0])
    assert not torch.equal(with_decay, without)
    assert torch.equal(without, run([0.0])[0])


@infos_for("test_param_groups_lr")
def test_param_groups_lr(info):
    """lr = 0 freezes a group (where the step size follows lr)."""
    params, gen = params_for(), torch.Generator().manual_seed(8)
    opt = make(info, each_input(info)[0], [{"params": params[:1], "lr": 0.0}, {"params": params[1:]}])
    frozen = params[0].detach().clone()
    for _ in range(3):
        feed(params, gen)
        quiet_step(opt)
    assert torch.equal(params[0].detach(), frozen)


@infos_for("test_zero_grad")
def test_zero_grad(info):
    """`zero_grad()` sets gradients to None, `zero_grad(set_to_none=False)` to zeros, also after the fast path
    made each p.grad a view of its gradient buffer."""
    params, gen = params_for(), torch.Generator().manual_seed(9)
    opt = make(info, each_input(info)[0], params)
    feed(params, gen)
    quiet_step(opt)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@infos_for("test_optimizer_can_be_printed")
def test_optimizer_can_be_printed(info):
    opt = make(info, each_input(info)[0], params_for())
    assert info.optim_cls.__name__ in repr(opt)


@infos_for("test_fp64_parameters")
def test_fp64_parameters(info):
    """float64 parameters step and stay float64 (torch's dtype-parametrised tests include fp64)."""
    params, gen = params_for(torch.float64), torch.Generator().manual_seed(10)
    opt = make(info, each_input(info)[0], params)
    before = [p.detach().clone() for p in params]
    for _ in range(2):
        feed(params, gen)
        quiet_step(opt)
    assert all(p.dtype == torch.float64 and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_every_not_applicable_has_a_reason():
    names = {i.name for i in INFOS}
    for (test, classes), reason in NOT_APPLICABLE.items():
        assert test.startswith("test_") and set(classes) <= names and len(reason) > 20
