"""optimized.Automagic_CameAMP8bit against reference.Automagic_CameAMP8bit, lockstep and free-running.

States are compared de-quantised (harness.dequantized); parameters as for Automagic_CameAMP. The upstream
mode is compared on fp32 parameters (tolerances.LOCKSTEP_8BIT_UPSTREAM says why not bf16).
"""

import pytest
import torch

import optimized
import reference

from .harness import OPTIMIZER_CASES, free_running, lockstep, roundtrip
from .test_family_reference import kwargs_for, resume_runs, run
from .tolerances import (
    FREE_RUNNING_8BIT_FP32,
    LOCKSTEP_8BIT_FLIPS,
    LOCKSTEP_8BIT_STATES,
    LOCKSTEP_8BIT_UPSTREAM,
    free_running_tolerance,
    lockstep_tolerance,
)

NAME = "Automagic_CameAMP8bit"
MODES = [("fixed", torch.float32), ("fixed", torch.bfloat16), ("upstream", torch.float32)]


def param_bound(compat, dtype) -> float:
    return (LOCKSTEP_8BIT_UPSTREAM if compat == "upstream" else lockstep_tolerance(dtype)).bound


def free_running_bound(compat, dtype) -> float:
    if compat == "upstream":
        return LOCKSTEP_8BIT_UPSTREAM.bound
    return (free_running_tolerance(dtype) if dtype == torch.bfloat16 else FREE_RUNNING_8BIT_FP32).bound


@pytest.mark.parametrize("compat,dtype", MODES, ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)
def test_lockstep(case, compat, dtype):
    worst = lockstep(case, dtype, compat, name=NAME)
    expected = {"params", "lr_mask", "exp_avg", "exp_avg_res", "last_polarity", "s", "avg_lr", "code_flips"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    assert worst["params"] <= param_bound(compat, dtype), worst["params"]
    assert worst["code_flips"] <= LOCKSTEP_8BIT_FLIPS.bound, worst["code_flips"]
    for key, err in worst.items():
        if key not in ("params", "code_flips"):
            assert err <= LOCKSTEP_8BIT_STATES.bound, f"{key}: {err:.3e}"


@pytest.mark.parametrize("compat,dtype", MODES, ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)
def test_free_running(case, compat, dtype):
    err = free_running(case, dtype, compat, name=NAME)
    assert err <= free_running_bound(compat, dtype), err


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_resume_is_bit_identical(compat):
    """k steps, save (weights_only), load into a new optimizer, N − k more == N straight steps."""
    straight, resumed = resume_runs(optimized.Automagic_CameAMP8bit, compat)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_state_dict_loads_into_the_reference(compat):
    """The formats are the same: a state_dict of either class continues in the other."""
    params, opt = run(optimized.Automagic_CameAMP8bit, compat, 5)
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = reference.Automagic_CameAMP8bit(ref_params, **kwargs_for(reference.Automagic_CameAMP8bit, compat))
    ref.load_state_dict(roundtrip(opt.state_dict()))
    mine, theirs = opt.state_dict()["state"], ref.state_dict()["state"]
    for pid, saved in mine.items():
        assert set(saved) == set(theirs[pid])
        for key, value in saved.items():
            if torch.is_tensor(value):
                assert torch.equal(value, theirs[pid][key]), key


def test_states_are_8bit_and_small():
    """Codes are uint8 and the state is ≤ 6.5 bytes/param during warm-up, ≤ 4.2 after (issue 6)."""
    cls = optimized.Automagic_CameAMP8bit
    params = [torch.nn.Parameter(torch.randn(64, 4096) * 0.1)]
    opt = cls(params, lr=1e-3, warmup_steps=4, compat="fixed")
    n = params[0].numel()
    run(cls, "fixed", 2, params, opt)
    warm = opt.state_bytes() / n
    run(cls, "fixed", 5, params, opt, start=2)
    after = opt.state_bytes() / n
    saved = opt.state_dict()["state"][0]
    assert saved["exp_avg_q"].dtype == torch.uint8 and saved["exp_avg_q_scale"].numel() == n // 4096
    assert warm <= 6.5 and after <= 4.2, (warm, after)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_codec_matches_bitsandbytes(compiled):
    """codec.quantize over a bucket (tensors cut into their own blocks, short last blocks, padding,
    an all-zero tensor, outliers) gives bitsandbytes' codes and absmax for every tensor, and
    codec.dequantize gives its values."""
    from optimized import codec
    from optimized.kernels import index_tensors, valid_mask
    from optimized.layout import build_layout
    from reference import blockwise_8bit

    gen = torch.Generator().manual_seed(4)
    tensors = [torch.randn(s, generator=gen) * 10.0**e for s, e in [((5000,), 0), ((3, 7), -3), ((9000,), 2)]]
    tensors.append(torch.zeros(300))
    tensors[0][17] = 1e4  # an outlier sets its block's absmax
    layout = build_layout(tensors, "cpu")
    blocks = codec.build_blocks(layout, "cpu")
    values = layout.empty(torch.float32, "cpu", fill=0)
    for i, t in enumerate(tensors):
        layout.view(values, i).copy_(t)
    state = codec.empty_state(layout, blocks, "cpu")

    def roundtrip(state, values, blocks, valid):
        codec.store(state, values, blocks, valid=valid)
        return codec.dequantize(state, blocks)

    run = torch.compile(roundtrip, fullgraph=True) if compiled else roundtrip
    restored = run(state, values, blocks.blocks, valid_mask(index_tensors(layout)))
    for i, t in enumerate(tensors):
        codes, absmax = codec.read_tensor(state, layout, blocks, i)
        want_codes, want_absmax = blockwise_8bit.quantize(t)
        assert torch.equal(codes, want_codes) and torch.equal(absmax, want_absmax), i
        assert torch.equal(layout.view(restored, i), blockwise_8bit.dequantize(want_codes, want_absmax)), i
