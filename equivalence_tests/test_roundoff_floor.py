"""The corrected mode's round-off floor (reference.roundoff_floor, issue 29): a gradient element that is only
round-off takes no step of its own, in every class of both packages; elements above the floor are untouched."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimized
import reference
from reference.registry import OPTIMIZERS
from reference.roundoff_floor import ROUNDOFF_FLOOR, floor_roundoff, group_floor

CLASSES = sorted({cls.__name__ for cls in OPTIMIZERS.values()})
PACKAGES = pytest.mark.parametrize("package", [reference, optimized], ids=["reference", "optimized"])
COMPILE_MODES = pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.compiled)],
                                            ids=["eager", "compiled"])  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64),
       st.floats(0, 1e2, allow_nan=False, width=32))  # fmt: skip
def test_the_floor_zeroes_what_is_at_or_below_it_and_keeps_the_rest_bit_for_bit(values, floor):
    g = torch.tensor(values)
    before = g.clone()
    out = floor_roundoff(g, torch.tensor(floor))
    assert torch.equal(g, before)  # the gradient itself is left as it is
    keep = g.abs() > floor
    assert torch.equal(out[keep], g[keep]) and bool((out[~keep] == 0).all())


def test_the_group_floor_is_a_fraction_of_the_mean_and_absent_when_the_sum_overflows():
    assert float(group_floor(torch.tensor(8.0), 4)) == 2.0 * ROUNDOFF_FLOOR
    assert float(group_floor(torch.tensor(float("inf")), 4)) == 0.0


def mixed_run(package, name, compat="fixed", steps=12):
    """A zero-initialised vector whose even elements get ±1e-12 gradients and odd ones ±1e-2, beside a matrix:
    (largest move of a 1e-12 element) / (mean move of a 1e-2 element)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(512))
    w = torch.nn.Parameter(torch.randn(16, 16, generator=gen))
    small = torch.arange(512) % 2 == 0
    kwargs = {"compat": compat} if "Hina" in name else {"warmup_steps": 6, "compat": compat}
    opt = getattr(package, name)([p, w], lr=1e-3, **kwargs)
    for _ in range(steps):
        p.grad = torch.where(small, 1e-12, 1e-2) * torch.randn(512, generator=gen).sign()
        w.grad = torch.randn(16, 16, generator=gen) * 1e-2
        opt.step()
    return float(p[small].abs().max() / p[~small].abs().mean())


@PACKAGES
@pytest.mark.parametrize("name", CLASSES)
def test_a_round_off_gradient_element_moves_by_round_off(package, name):
    assert mixed_run(package, name) < 1e-6


@pytest.mark.parametrize("name", ["Automagic_CameAMP", "HinaAdamWOptimizer"])
def test_upstream_takes_full_steps_on_round_off(name):
    """What the floor corrects: upstream normalises the 1e-12 elements into steps far above round-off (Automagic:
    the 1e-2 ones' size; HinaAdamW: 1e-12/ε = 1e-4 of it)."""
    assert mixed_run(reference, name, compat="upstream") > 1e-5


def floor_edge_states(package, name):
    """One step on a zero bf16 vector whose last gradient element is 2⁻²⁰: just above the group's floor in fp32
    (S/n < 1 by 1.5/n), equal to the floor rounded to bf16. Returns that element of θ and of each float state
    of θ's shape."""
    n = 1024
    g = torch.ones(n, dtype=torch.bfloat16)
    g[-2], g[-1] = 0.5, 2.0**-20
    floor = group_floor(g.float().abs().sum(), n)
    assert float(floor) < 2.0**-20
    assert float(floor.bfloat16()) == 2.0**-20
    p = torch.nn.Parameter(torch.zeros(n, dtype=torch.bfloat16))
    kwargs = {} if "Hina" in name else {"warmup_steps": 6}
    opt = getattr(package, name)([p], lr=1e-3, **kwargs)
    p.grad = g
    opt.step()
    values = {k: v for k, v in opt.state[p].items() if torch.is_tensor(v) and v.is_floating_point()}
    return {"theta": float(p[-1]), **{k: float(v[-1]) for k, v in values.items() if v.shape == p.shape}}


@COMPILE_MODES
@pytest.mark.parametrize("name", CLASSES)
def test_the_floor_is_compared_exactly_whatever_the_gradient_dtype(compiled, name):
    """|g| is compared with the fp32 floor, not with the floor rounded to a bf16 gradient's dtype: an element
    between the two is kept, by the fast classes (compiled and eager) as by the reference."""
    expected, got = floor_edge_states(reference, name), floor_edge_states(optimized, name)
    assert expected.keys() == got.keys()
    assert any(v != 0 for v in expected.values())  # the element is kept: it steps, or a state holds it
    assert {k: v == 0 for k, v in got.items()} == {k: v == 0 for k, v in expected.items()}
