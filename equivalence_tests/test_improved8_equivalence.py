"""optimized.Automagic_CameAMP_Improved_8Bit against reference.Automagic_CameAMP_Improved_8Bit, lockstep and
free-running, over every phase: the T4c direction with OrthoGrad and adaptive weight decay (t < W/2), the
T4c direction with the warm-up schedule (t < W), and consistency momentum with the random walk after W, whose
lr is halved at step 11.

The Improved test's parameters (test_improved_equivalence.make_params); two matrices carry `_is_lora_layer`
(True on a (16, 24) one, which splits it from its shape-mates, False on the (24, 16) one, a LoRA layer
upstream and not when fixed). 8-bit states are compared de-quantised and their codes by the fraction that
differs (harness.record_state_errors), as the Automagic_CameAMP8bit test compares them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import optimized
import reference
from optimized import shape_stack, stack_codec
from reference import blockwise_8bit

from .cases.improved import (
    STEPS,
    drive,
    loads_unchanged,
    recording_stack_sizes,
    resumes_bit_identically,
    saved_after_steps,
)
from .cases.improved8 import (
    CASES,
    COMPILED,
    MAKE_TEST_COMPILED_LORA,
    MAKE_TEST_COMPILED_SHAPES,
    MATRIX,
    build,
    free_running_bound,
    make_params,
    run,
)
from .harness import SELF, assert_free_running
from .tolerances import LOCKSTEP_8BIT_FLIPS_SMALL_SETS, LOCKSTEP_8BIT_STATES, lockstep_tolerance


def check_lockstep(worst: dict, dtype) -> None:
    assert worst.pop("code_flips") <= LOCKSTEP_8BIT_FLIPS_SMALL_SETS.bound
    assert worst.pop("params") <= lockstep_tolerance(dtype).bound
    for key, err in worst.items():
        bound = max(lockstep_tolerance(dtype).bound, LOCKSTEP_8BIT_STATES.bound)
        assert err <= bound, f"{key}: {err:.3e}"


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_lockstep(case, compat, dtype):
    worst = run(case, dtype, compat, lockstep=True)
    expected = {"params", "step", "exp_avg", "exp_avg_sq", "lr_mask", "s", "code_flips"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    check_lockstep(worst, dtype)


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_free_running(case, compat, dtype):
    err = run(case, dtype, compat, lockstep=False)["params"]
    own = lambda: run(case, dtype, compat, lockstep=False, partner=SELF)["params"]  # noqa: E731
    assert_free_running(err, free_running_bound(dtype), own)


def test_large_partitions_step_as_bounded_stacks(monkeypatch):
    """Three 16×24 matrices as stacks of 2 and 1 (STACK_ELEMENTS), with weight decay's group statistics of |g|
    taken a stack at a time: the reference's result."""
    monkeypatch.setattr(shape_stack, "STACK_ELEMENTS", 2 * 16 * 24)
    case = "came=False, no edge/frequency/spatial, wd 1e-2, force_8bit"
    sizes = []
    check_lockstep(drive(*build(case, torch.float32, "fixed"), torch.float32, recording_stack_sizes((16, 24), sizes)),
                   torch.float32)  # fmt: skip
    assert sizes == [[1, 2]] * STEPS


@pytest.mark.compiled
@pytest.mark.parametrize("compat,dtype", COMPILED[:1], ids=str)
def test_compiled(compat, dtype):
    """The compiled stack step (`improved8_step.fused_stack_step`), lockstep and free-running, on two stacks
    of two LoRA matrices (one graph per phase: shapes are dynamic), every phase."""
    check_compiled(next(iter(CASES)), compat, dtype, MAKE_TEST_COMPILED_SHAPES, MAKE_TEST_COMPILED_LORA)


def check_compiled(case, compat, dtype, shapes, lora=None):
    check_lockstep(run(case, dtype, compat, lockstep=True, shapes=shapes, lora=lora), dtype)
    err = run(case, dtype, compat, lockstep=False, shapes=shapes, lora=lora)["params"]
    own = lambda: run(case, dtype, compat, lockstep=False, shapes=shapes, lora=lora, partner=SELF)["params"]  # noqa: E731
    assert_free_running(err, free_running_bound(dtype), own)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_resume_is_bit_identical(compat):
    """k = 3: s and the polarity exist; the random walk after W = 8 draws from the restored generator."""
    case = next(iter(CASES))
    assert resumes_bit_identically(
        lambda: make_params(torch.float32),
        lambda params: optimized.Automagic_CameAMP_Improved_8Bit(params, compat=compat, **CASES[case]),
    )


def test_state_dicts_load_across_the_two_classes():
    case = next(iter(CASES))
    ref, opt, ref_params, opt_params = build(case, torch.float32, "fixed")
    saved = saved_after_steps(ref, opt, ref_params, opt_params)
    assert any(k.endswith("_q") for s in saved["state"].values() for k in s)
    fresh = reference.Automagic_CameAMP_Improved_8Bit(make_params(torch.float32), compat="fixed", **CASES[case])
    assert loads_unchanged(fresh, saved)


def test_states_are_views_of_the_stacks_and_lora_layers_stack_apart():
    params = [torch.nn.Parameter(torch.randn(s) * 0.1) for _ in range(10) for s in ((16, 64), (64, 16))]
    for p in params[:4]:
        p._is_lora_layer = True
    opt = optimized.Automagic_CameAMP_Improved_8Bit(params, lr=1e-3, warmup_steps=4, min_8bit_size=512)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert len(opt._stacks) == 4  # two shapes, LoRA or not
    for stack in opt._stacks.values():
        for i, p in enumerate(stack.params):
            assert p.data_ptr() == stack.theta[i].data_ptr()
            assert opt.state[p]["exp_avg_q"].data_ptr() == stack.states["exp_avg_q"][i].data_ptr()
    report = opt.get_memory_efficiency_report()
    assert report["8bit_parameters"] == sum(p.numel() for p in params)
    assert report["states_breakdown"]["exp_avg_q"] == sum(p.numel() for p in params)


@st.composite
def stacks(draw):
    """A stack of 1–3 vectors or matrices (sizes below, at and over the 4,096-element block, multiples of it
    or not), scaled by powers of ten, with outliers, zero blocks or a non-contiguous layout."""
    shape = draw(st.sampled_from([(37,), (4096,), (8192,), (4100,), (16, 768), (33, 250), (5, 7)]))
    count = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-8, 1e-3, 1.0, 1e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = torch.randn((count, *shape), generator=g) * scale
    kind = draw(st.sampled_from(["plain", "outlier", "zeros", "strided"]))
    if kind == "outlier":
        x.view(count, -1)[:, draw(st.integers(0, x[0].numel() - 1))] = 1e3 * scale
    elif kind == "zeros":
        x.view(count, -1)[:, : x[0].numel() // 2] = 0
    elif kind == "strided":
        x = torch.randn((count, *shape, 2), generator=g)[..., 1] * scale
    return x


@given(x=stacks(), exact_zero=st.booleans())
def test_stacked_codec_is_bitsandbytes_bit_for_bit(x, exact_zero):
    """optimized.stack_codec (block gather, or a reshape for vectors of whole blocks): each tensor's codes and
    absmax are bitsandbytes' (reference.blockwise_8bit.quantize; with `exact_zero`, the corrected mode's), and
    so is its de-quantised value."""
    blocks = stack_codec.blocks_for(tuple(x.shape[1:]), x.device, exact_zero)
    q, absmax = stack_codec.quantize(x, blocks)
    restored = stack_codec.dequantize(q, absmax, blocks)
    for i in range(x.shape[0]):
        q_i, absmax_i = blockwise_8bit.quantize(x[i], exact_zero=exact_zero)
        assert torch.equal(q[i], q_i) and torch.equal(absmax[i], absmax_i)
        assert torch.equal(restored[i], blockwise_8bit.dequantize(q_i, absmax_i))
