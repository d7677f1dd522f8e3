"""state_dict round trips: exact, `weights_only=True`, and resuming is bit-identical to not stopping."""

import warnings

import pytest
import torch

import optimized
import reference

from .harness import make_params, roundtrip, same_state

IMPLEMENTATIONS = [reference.Automagic_CameAMP, optimized.Automagic_CameAMP]
KWARGS = dict(lr=1e-4, warmup_steps=8, weight_decay=1e-2)


def _grads(params, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen).to(p.dtype) for p in params] for _ in range(n)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=["reference", "optimized"])
@pytest.mark.parametrize("stop", [1, 3, 8, 11])  # seeding, early, t == W, after W
def test_resume_is_bit_identical(cls, compat, dtype, stop):
    total = 14
    grads = _grads(make_params(dtype, 0), total, seed=1)
    straight = make_params(dtype, 0)
    opt = cls(straight, compat=compat, **KWARGS)
    _run(opt, straight, grads)

    first = make_params(dtype, 0)
    opt1 = cls(first, compat=compat, **KWARGS)
    _run(opt1, first, grads[:stop])
    saved = roundtrip(opt1.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = cls(resumed, compat=compat, **KWARGS)
    opt2.load_state_dict(saved)
    _run(opt2, resumed, grads[stop:])

    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
    assert same_state(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=["reference", "optimized"])
def test_state_dict_keeps_dtypes_and_warns_without_magic_version(cls):
    params = make_params(torch.bfloat16, 0)
    opt = cls(params, **KWARGS)
    _run(opt, params, _grads(params, 3, seed=2))
    sd = roundtrip(opt.state_dict())
    assert sd["magic_version"] == 1
    fresh = cls([torch.nn.Parameter(p.detach().clone()) for p in params], **KWARGS)
    fresh.load_state_dict(sd)
    assert same_state(sd, fresh.state_dict())
    del sd["magic_version"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load_state_dict(sd)
    assert any("magic_version" in str(w.message) for w in caught)


@pytest.mark.parametrize("src,dst", [(reference, optimized), (optimized, reference)], ids=["ref→opt", "opt→ref"])
def test_state_dicts_are_interchangeable(src, dst):
    """The two implementations use one state_dict format: each can resume from the other's."""
    params = make_params(torch.float32, 0)
    a = src.Automagic_CameAMP(params, **KWARGS)
    _run(a, params, _grads(params, 5, seed=3))
    sd = roundtrip(a.state_dict())
    b = dst.Automagic_CameAMP([torch.nn.Parameter(p.detach().clone()) for p in params], **KWARGS)
    b.load_state_dict(sd)
    _assert_same_state(sd, b.state_dict())


def _assert_same_state(a, b):
    """Equal, except avg_lr: the optimized path recomputes it as a mean of the mask (round-off)."""
    assert a["state"].keys() == b["state"].keys()
    for pid, sa in a["state"].items():
        sb = b["state"][pid]
        assert sa.keys() == sb.keys()
        for k, v in sa.items():
            if k == "avg_lr":
                assert sb[k] == pytest.approx(v, rel=1e-6)
            elif torch.is_tensor(v):
                assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k
            else:
                assert v == sb[k], k
