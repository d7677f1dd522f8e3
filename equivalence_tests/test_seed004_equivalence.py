"""optimized.Automagic_CameAMP_8Bit (seed 004) against reference.Automagic_CameAMP_8Bit, lockstep and
free-running, over every phase (TAM + Grams + edge suppression while t < W/2, the mask warm-up with SPD,
the cautious phase with the post-warm-up mask, whose lr is halved at step 11) and the periodic error fold.

Quantised states are compared by their effective value D(q) + e (`effective`): error feedback carries what
a code leaves out into e, so two runs whose targets differ by round-off store the same D(q) + e even where
a code flips. Without feedback D(q) is compared, and a flip is one code step (LOCKSTEP_MINMAX_NO_FEEDBACK).
The codes themselves are checked by `code_steps`: D(q) of the two runs at most one code step apart.
"""

from __future__ import annotations

import pytest
import torch

import optimized
import reference
from optimized import shape_stack

from .cases.improved import (
    STEPS,
    drive,
    loads_unchanged,
    make_params,
    recording_stack_sizes,
    resumes_bit_identically,
    saved_after_steps,
)
from .cases.seed004 import (
    CASES,
    COMPILED,
    MAKE_TEST_COMPILED_SHAPES,
    MATRIX,
    build,
    code_step_bound,
    effective,
    free_running_bound,
    record,
    run,
    state_bound,
)
from .harness import SELF, assert_free_running, compare_states
from .tolerances import lockstep_tolerance


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_lockstep(case, compat, dtype):
    worst = run(case, dtype, compat, lockstep=True)
    expected = {"params", "step", "exp_avg", "exp_avg_res", "lr_mask", "lr_max", "avg_lr", "pre", "s", "code_steps"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    assert worst.pop("params") <= lockstep_tolerance(dtype).bound
    assert worst.pop("code_steps") <= code_step_bound(compat, dtype)
    for key, err in worst.items():
        assert err <= state_bound(case, dtype), f"{key}: {err:.3e}"


def test_large_partitions_step_as_bounded_stacks(monkeypatch):
    """Three 16×24 matrices as stacks of 2 and 1 (STACK_ELEMENTS): the reference's result."""
    monkeypatch.setattr(shape_stack, "STACK_ELEMENTS", 2 * 16 * 24)
    case, sizes = "defaults, W 8, B 64, sync 5", []
    worst = drive(*build(case, torch.float32, "fixed"), torch.float32, recording_stack_sizes((16, 24), sizes, record))
    assert sizes == [[1, 2]] * STEPS
    assert worst.pop("params") <= lockstep_tolerance(torch.float32).bound
    assert worst.pop("code_steps") <= code_step_bound("fixed", torch.float32)
    for key, err in worst.items():
        assert err <= state_bound(case, torch.float32), f"{key}: {err:.3e}"


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=str)
def test_free_running(case, compat, dtype):
    err = run(case, dtype, compat, lockstep=False)["params"]
    own = lambda: run(case, dtype, compat, lockstep=False, partner=SELF)["params"]  # noqa: E731
    assert_free_running(err, free_running_bound(dtype), own)


@pytest.mark.compiled
@pytest.mark.parametrize("compat,dtype", COMPILED[:1], ids=str)
def test_compiled(compat, dtype):
    """The compiled stack step (`seed004_step.fused_stack_step`), lockstep and free-running, on two stacks of
    two matrices of different shapes (one graph per phase: shapes are dynamic), every phase."""
    check_compiled(next(iter(CASES)), compat, dtype, MAKE_TEST_COMPILED_SHAPES)


def check_compiled(case, compat, dtype, shapes):
    worst = run(case, dtype, compat, lockstep=True, shapes=shapes)
    assert worst.pop("code_steps") <= code_step_bound(compat, dtype)
    for key, err in worst.items():
        assert err <= lockstep_tolerance(dtype).bound, f"lockstep {key}: {err:.3e}"
    err = run(case, dtype, compat, lockstep=False, shapes=shapes)["params"]
    own = lambda: run(case, dtype, compat, lockstep=False, shapes=shapes, partner=SELF)["params"]  # noqa: E731
    assert_free_running(err, free_running_bound(dtype), own)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_resume_is_bit_identical(compat):
    """k = 3: s, pre and the error accumulators exist; the fold at step 5 comes after the resume."""
    assert resumes_bit_identically(
        lambda: make_params(torch.float32),
        lambda params: optimized.Automagic_CameAMP_8Bit(params, compat=compat, **CASES["defaults, W 8, B 64, sync 5"]),
    )


def test_state_dicts_load_across_the_two_classes():
    case = "defaults, W 8, B 64, sync 5"
    ref, opt, ref_params, opt_params = build(case, torch.float32, "fixed")
    saved = saved_after_steps(ref, opt, ref_params, opt_params)
    assert saved["block_size"] == 64 and any(k.endswith("_err") for s in saved["state"].values() for k in s)
    assert loads_unchanged(reference.Automagic_CameAMP_8Bit(make_params(torch.float32), compat="fixed", **CASES[case]),
                           saved)  # fmt: skip
    worst = compare_states(effective(ref.state_dict(), 64), effective(saved, 64))
    assert max(worst.values()) <= lockstep_tolerance(torch.float32).bound, worst


def test_states_are_views_of_the_stacks_and_memory_stats_are_measured():
    params = [torch.nn.Parameter(torch.randn(s) * 0.1) for _ in range(10) for s in ((16, 64), (64, 16))]
    opt = optimized.Automagic_CameAMP_8Bit(params, lr=1e-3, warmup_steps=4)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert len(opt._stacks) == 2
    for stack in opt._stacks.values():
        for i, p in enumerate(stack.params):
            assert opt.state[p]["exp_avg_q"].data_ptr() == stack.states["exp_avg_q"][i].data_ptr()
    stats = opt.get_memory_stats()
    expected = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items()
                   if torch.is_tensor(v) and k.endswith(("_q", "_scale", "_zero", "_err")))  # fmt: skip
    assert stats["total_quantized_memory"] == expected
