"""Seed 004's Automagic_CameAMP_8Bit and its block min/max codec (spec O8, T18).

S2o bit-identity with quantisation off is checked by tools/upstream_s2o_parity.py (needs the upstream file).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference
from optimized import minmax_codec, stack_blocks
from reference import minmax_8bit

from .harness import roundtrip

EightBit = reference.Automagic_CameAMP_8Bit
BLOCK_SIZES = (64, 256, 1024, 4096)
# D(q) + e_new = x + e up to two roundings (e_new = t − D(q), then the sum), relative to max |x + e|
FEEDBACK_ROUNDING = 2 * torch.finfo(torch.float32).eps
ROUNDING_SLACK = 4  # fp32 ulps of the block range: (x − z)/s and q·s + z each round once (observed ≤ 1)


@st.composite
def tensors(draw):
    n = draw(st.integers(1, 5000))
    scale = draw(st.sampled_from([1e-8, 1e-3, 1.0, 1e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = torch.randn(n, generator=g) * scale
    kind = draw(st.sampled_from(["plain", "outlier", "zeros", "constant", "strided"]))
    if kind == "outlier":
        x[draw(st.integers(0, n - 1))] = 1e3 * scale
    elif kind == "zeros":
        x[: n // 2] = 0
    elif kind == "constant":
        x = torch.full((n,), -0.25 * scale)
    elif kind == "strided":
        x = torch.randn(n, 2, generator=g)[:, 1] * scale  # non-contiguous
    return x


@given(x=tensors(), block_size=st.sampled_from(BLOCK_SIZES))
def test_round_trip_within_half_a_step(x, block_size):
    q, scale, zero = minmax_8bit.quantize(x, block_size)
    assert q.dtype == torch.uint8 and q.shape == x.shape and scale.numel() == -(-x.numel() // block_size)
    y = minmax_8bit.dequantize(q, scale, zero, block_size)
    bound = minmax_8bit.error_bound(scale).repeat_interleave(block_size)[: x.numel()]
    span = (scale * 255).repeat_interleave(block_size)[: x.numel()]
    slack = (
        ROUNDING_SLACK * torch.finfo(torch.float32).eps * (span + zero.abs().repeat_interleave(block_size)[: x.numel()])
    )
    assert ((x - y).abs() <= bound + slack).all()
    if bool((scale == 0).all()):  # constant blocks are exact [I-50]
        assert torch.equal(y, x.float())


@given(x=tensors(), block_size=st.sampled_from(BLOCK_SIZES), count=st.integers(1, 3))
def test_stacked_codec_is_the_readable_one_bit_for_bit(x, block_size, count):
    """optimized.minmax_codec on a stack of `count` tensors: each row's codes, scales and zeros are the
    reference's, and so is its de-quantised value; storing with feedback keeps x + e = D(q) + e_new."""
    stack = torch.stack([x * (i + 1) for i in range(count)])
    ix = stack_blocks.block_index(x.numel(), block_size, x.device)
    q, scale, zero = minmax_codec.quantize(stack, ix)
    for i in range(count):
        q_i, scale_i, zero_i = minmax_8bit.quantize(stack[i], block_size)
        assert torch.equal(q[i], q_i) and torch.equal(scale[i], scale_i) and torch.equal(zero[i], zero_i)
        assert torch.equal(
            minmax_codec.dequantize(q, scale, zero, ix)[i], minmax_8bit.dequantize(q_i, scale_i, zero_i, block_size)
        )
    error = torch.randn(stack.shape) * scale.max() / 4
    state = minmax_codec.QState(q.clone(), scale.clone(), zero.clone(), error.clone())
    minmax_codec.store(state, stack, ix)
    kept = minmax_codec.load(state, ix) + state.err
    assert torch.allclose(kept, stack + error, rtol=0, atol=FEEDBACK_ROUNDING * float((stack + error).abs().max()))


def test_error_feedback_reduces_accumulated_drift():
    """An EMA stored 8-bit each step drifts less from the fp32 EMA with error feedback than without."""
    drift = {}
    for feedback in (False, True):
        stored, error, exact = torch.zeros(4096), (torch.zeros(4096) if feedback else None), torch.zeros(4096)
        gen = torch.Generator().manual_seed(1)
        for _ in range(300):
            x = torch.randn(4096, generator=gen) + 0.5
            exact = 0.99 * exact + 0.01 * x
            q, s, z, error = minmax_8bit.store_with_feedback(0.99 * stored + 0.01 * x, error, 256)
            stored = minmax_8bit.dequantize(q, s, z, 256)
        drift[feedback] = float((stored - exact).abs().mean())
    assert drift[True] < 0.5 * drift[False], drift


def make(quantize=True, **kwargs):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((48, 32), (300,), (16,))]
    kwargs = {"compat": "upstream", **kwargs}  # upstream's numerics unless a test asks for the fixed ones
    opt = EightBit(params, lr=1e-3, warmup_steps=8, block_size=64, quantize_states=quantize, **kwargs)
    return params, opt, g


def steps(params, opt, g, n):
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_which_states_are_quantised_and_memory_stats():
    params, opt, g = make(sync_frequency=0)
    steps(params, opt, g, 2)
    big, mid, small = (opt.state[p] for p in params)
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_res", "s", "edge_history"):
        assert big[f"{key}_q"].dtype == torch.uint8 and big[f"{key}_err"].dtype == torch.float32 and key not in big
    assert "exp_avg_q" in mid and "exp_avg" in small  # quantised iff numel > block_size (16 ≤ 64)
    assert big["lr_mask"].dtype == torch.float32 and "spatial_variance" in big  # high precision
    stats = opt.get_memory_stats()
    qs = opt.quantized_states
    expected_q = sum(s.q.numel() + 4 * (s.scale.numel() + s.zero.numel()) + 4 * s.error_accumulator.numel()
                     for d in qs.values() for s in d.values())  # fmt: skip
    assert stats["total_quantized_memory"] == expected_q
    assert stats["quantized_params"] == sum(len(d) for d in qs.values()) == 10
    assert torch.equal(opt.high_precision_states[0]["lr_mask"], big["lr_mask"])
    assert stats["compression_ratio"] > 1  # with error buffers each element costs 5 B > 4 B [I-50]
    _, lean, g2 = make(error_correction=False)
    steps(lean.param_groups[0]["params"], lean, g2, 2)
    # 5 of 8 state tensors at ~1 B; lr_mask, spatial_variance and pre stay fp32 (observed 0.52)
    assert lean.get_memory_stats()["compression_ratio"] < 0.6


def test_mixed_precision_false_quantises_the_mask():
    params, opt, g = make(mixed_precision=False)
    steps(params, opt, g, 2)
    assert "lr_mask_q" in opt.state[params[0]] and "spatial_variance_q" in opt.state[params[0]]


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_tracks_the_unquantised_run(compat):
    """The 8-bit run stays near the S2o run with full-precision states (block 64, error feedback)."""
    runs = {}
    for quantize in (False, True):
        params, opt, g = make(quantize, compat=compat)
        start = [p.detach().clone() for p in params]
        steps(params, opt, g, 30)
        runs[quantize] = [(p.detach() - s) for p, s in zip(params, start, strict=True)]
    for exact, quantized in zip(runs[False], runs[True], strict=True):
        assert torch.isfinite(quantized).all()
        rel = float((exact - quantized).norm() / exact.norm().clamp(min=1e-12))
        assert rel < 0.35, rel  # observed ≤ 0.1: 8-bit states change the trajectory, not its scale


def test_sync_folds_the_error_accumulator():
    params, opt, g = make(sync_frequency=3)
    steps(params, opt, g, 3)
    assert not opt.state[params[0]]["exp_avg_err"].any()
    steps(params, opt, g, 1)
    assert opt.state[params[0]]["exp_avg_err"].any()


def test_state_dict_round_trip_and_block_size_check():
    params, opt, g = make()
    steps(params, opt, g, 3)
    loaded = roundtrip(opt.state_dict())
    assert loaded["magic8_version"] == 1 and loaded["block_size"] == 64
    _, other, _ = make()
    other.load_state_dict(loaded)
    for a, b in zip(opt.state.values(), other.state.values(), strict=True):
        for k, v in a.items():
            assert torch.equal(v, b[k]) if torch.is_tensor(v) else v == b[k]
    wrong = EightBit(params, block_size=128)
    with pytest.raises(ValueError, match="block_size"):
        wrong.load_state_dict(loaded)


def test_arguments():
    with pytest.warns(UserWarning, match="experimental"):
        EightBit([torch.nn.Parameter(torch.zeros(3))], adaptive_block_size=True)
    for kwargs, name in (({"block_size": 1}, "block_size"), ({"sync_frequency": -1}, "sync_frequency"),
                         ({"error_correction": "yes"}, "error_correction")):  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=name):
            EightBit([torch.nn.Parameter(torch.zeros(3))], **kwargs)
