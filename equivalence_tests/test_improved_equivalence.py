"""optimized.Automagic_CameAMP_Improved against reference.Automagic_CameAMP_Improved, lockstep and
free-running, over every phase: TAM + OrthoGrad + Grams + edge suppression (t < W/2), the mask warm-up
with SPD (t < W), and the cautious phase with the post-warm-up mask, whose lr is halved at step 11.

The parameters repeat shapes (so stacks hold several tensors), include a 100×120 matrix (over TAM's
10,000-element switch to the global cosine), 16×24 and 24×16 matrices (rank > 10, so the rank penalty
acts), a 4-D, a 1-D, a 0-d (OrthoGrad's output is rounding there upstream) and a non-contiguous one.
"""

from __future__ import annotations

import pytest
import torch

import optimized
import reference
from optimized import automagic_cameamp_improved, improved_step, shape_stack

from .cases.improved import (
    CASES,
    COMPILED,
    MASK,
    MATRIX,
    STEPS,
    build,
    drive,
    loads_unchanged,
    make_params,
    recording_stack_sizes,
    resumes_bit_identically,
    run,
    saved_after_steps,
)
from .harness import SELF, assert_free_running, compare_states
from .tolerances import free_running_tolerance, lockstep_tolerance

MAKE_TEST_COMPILED_SHAPES = [(16, 24), (16, 24), (24, 16), (24, 16)]


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_lockstep(case, compat, dtype):
    worst = run(case, dtype, compat, lockstep=True)
    expected = {"params", "step", "exp_avg", "exp_avg_res", "lr_mask", "lr_max", "avg_lr", "pre", "s"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    bound = lockstep_tolerance(dtype).bound
    for key, err in worst.items():
        assert err <= bound, f"{key}: {err:.3e} > {bound}"


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_free_running(case, compat, dtype):
    err = run(case, dtype, compat, lockstep=False)["params"]
    own = lambda: run(case, dtype, compat, lockstep=False, partner=SELF)["params"]  # noqa: E731
    assert_free_running(err, free_running_tolerance(dtype).bound, own)


def _compiled_lockstep_and_free_running(compat, dtype):
    """`defaults, W 8` on the two stacks of two matrices, lockstep and free-running, within the tolerances."""
    case = "defaults, W 8"
    worst = run(case, dtype, compat, lockstep=True, shapes=MAKE_TEST_COMPILED_SHAPES)
    for key, err in worst.items():
        assert err <= lockstep_tolerance(dtype).bound, f"lockstep {key}: {err:.3e}"
    err = run(case, dtype, compat, lockstep=False, shapes=MAKE_TEST_COMPILED_SHAPES)["params"]
    own = lambda: run(case, dtype, compat, lockstep=False, shapes=MAKE_TEST_COMPILED_SHAPES, partner=SELF)["params"]  # noqa: E731
    assert_free_running(err, free_running_tolerance(dtype).bound, own)


@pytest.mark.compiled
@pytest.mark.parametrize("compat,dtype", COMPILED[:1], ids=str)
def test_compiled(compat, dtype):
    """The compiled stack step (`improved_step.fused_stack_step`), lockstep and free-running, on two stacks of
    two matrices, every phase (`make verify` adds a matrix over the cascade-sum and TAM switches, a vector
    and a 0-d tensor)."""
    _compiled_lockstep_and_free_running(compat, dtype)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_tensors_without_a_gradient_split_the_stacks(compat):
    """Tensors that skip steps fall behind their shape-mates: the stacks split by step count (and re-form),
    and every tensor keeps the reference's state."""
    worst = run("defaults, W 8", torch.float32, compat, lockstep=True, skip=lambda t, i: (t + i) % 4 == 0)
    for key, err in worst.items():
        assert err <= lockstep_tolerance(torch.float32).bound, f"{key}: {err:.3e}"


def test_same_shapes_share_one_stack():
    """40 LoRA-like tensors of two shapes are stepped as two stacks; parameters and states are views."""
    params = [torch.nn.Parameter(torch.randn(s) * 0.1) for _ in range(20) for s in ((16, 64), (64, 16))]
    opt = optimized.Automagic_CameAMP_Improved(params, **MASK, warmup_steps=4)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert len(opt._stacks) == 2
    for stack in opt._stacks.values():
        for i, p in enumerate(stack.params):
            assert p.data_ptr() == stack.theta[i].data_ptr()
            assert opt.state[p]["exp_avg"].data_ptr() == stack.states["exp_avg"][i].data_ptr()


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_large_partitions_step_as_bounded_stacks(compat, monkeypatch):
    """A partition of more than STACK_ELEMENTS elements steps as stacks of at most that many (here the three
    16×24 matrices: stacks of 2 and 1), with the reference's result."""
    monkeypatch.setattr(shape_stack, "STACK_ELEMENTS", 2 * 16 * 24)
    sizes = []
    worst = drive(*build("defaults, W 8", torch.float32, compat), torch.float32, recording_stack_sizes((16, 24), sizes))
    assert sizes == [[1, 2]] * STEPS
    for key, err in worst.items():
        assert err <= lockstep_tolerance(torch.float32).bound, f"{key}: {err:.3e}"


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_resume_is_bit_identical(compat):
    """k = 3 in the TAM phase, where s and pre exist (`resumes_bit_identically`)."""
    assert resumes_bit_identically(
        lambda: make_params(torch.float32),
        lambda params: optimized.Automagic_CameAMP_Improved(params, compat=compat, **CASES["defaults, W 8"]),
    )


def test_state_dicts_load_across_the_two_classes():
    ref, opt, ref_params, opt_params = build("defaults, W 8", torch.float32, "fixed")
    saved = saved_after_steps(ref, opt, ref_params, opt_params)
    fresh = reference.Automagic_CameAMP_Improved(make_params(torch.float32), compat="fixed", **CASES["defaults, W 8"])
    assert loads_unchanged(fresh, saved)
    assert max(compare_states(ref.state_dict(), saved).values()) <= lockstep_tolerance(torch.float32).bound


def _one_pass_and_passes_agree(calls: list):
    """A stand-in for `improved_step.fused_stack_step` that steps a copy of θ and the states in one pass and
    the originals in passes (`improved_step.in_passes`), asserts both bit-identical and appends the number of
    passes to `calls`."""
    one_pass = improved_step.stack_step

    def both(theta, raw_grad, group_sum, floor, st, *rest):
        copy_theta, copy_st = theta.clone(), {k: v.clone() for k, v in st.items()}
        one_pass(copy_theta, raw_grad, group_sum, floor, copy_st, *rest)
        passes = []

        def counted(*args):
            passes.append(1)
            return one_pass(*args)

        improved_step.in_passes(counted, theta, raw_grad, group_sum, floor, st, *rest)
        calls.append(len(passes))
        assert torch.equal(theta, copy_theta), "θ"
        for key, value in st.items():
            assert torch.equal(value, copy_st[key]), key

    return both


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_a_step_in_passes_is_the_step_in_one(case, compat, dtype, monkeypatch):
    """Every stack of every phase and case (the early phase too, which steps in one pass), stepped in passes
    split at its reductions, writes what the one-pass step writes, bit for bit; the steps after the early
    phase take ≥ 3 passes (so the split happens)."""
    calls = []
    monkeypatch.setattr(improved_step, "fused_stack_step", _one_pass_and_passes_agree(calls))
    run(case, dtype, compat, lockstep=False)
    if compat == "upstream" and dtype == torch.bfloat16:
        assert calls == []  # its stacks run uncompiled, in one pass (`_uncompiled`)
    else:
        assert calls and max(calls) >= 3, calls


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_a_tensor_too_large_to_stack_steps_in_passes(compat, monkeypatch):
    """A tensor over STACK_ELEMENTS steps in passes after the early phase, and in one before, with the
    reference's result (lockstep)."""
    passes = []
    in_passes = improved_step.in_passes
    monkeypatch.setattr(improved_step, "in_passes", lambda *args: passes.append(1) or in_passes(*args))
    shapes = [(shape_stack.STACK_ELEMENTS + 3,), (16, 24)]
    worst = run("defaults, W 8", torch.float32, compat, lockstep=True, shapes=shapes)
    assert len(passes) == STEPS - 8 // 2 + 1  # t ≥ W/2 = 4, the large tensor only
    for key, err in worst.items():
        assert err <= lockstep_tolerance(torch.float32).bound, f"{key}: {err:.3e}"


@pytest.mark.compiled
@pytest.mark.parametrize("compat,dtype", COMPILED[:1], ids=str)
def test_compiled_in_passes(compat, dtype, monkeypatch):
    """The compiled stack step in passes (`improved_step.Passes`), lockstep and free-running, every phase past
    the early one on the two stacks of `test_compiled` (whose one-pass early graphs it reuses)."""
    monkeypatch.setattr(automagic_cameamp_improved, "steps_in_passes", lambda stack, early: not early)
    _compiled_lockstep_and_free_running(compat, dtype)
