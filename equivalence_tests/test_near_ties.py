"""The perturbed reference's near-tie flipper (harness.near_ties_flipped): it moves an 8-bit code only where the
code's input lies within NEAR_TIE_ULPS of a rounding edge, and there to the edge's other side."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import blockwise_8bit, minmax_8bit

from .harness import NEAR_TIE_ULPS, near_ties_flipped

BLOCK = 64
EPS = torch.finfo(torch.float32).eps


def minmax_flipped(x):
    return near_ties_flipped(lambda v: minmax_8bit.quantize(v, BLOCK), x, BLOCK, zero_point=True)


@given(st.integers(0, 2**31 - 1), st.integers(1, 4 * BLOCK), st.floats(1e-6, 1e6))
def test_minmax_codes_move_one_step_and_only_at_an_edge(seed, n, magnitude):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * magnitude
    (codes, scale, zero), (moved, moved_scale, moved_zero) = minmax_8bit.quantize(x, BLOCK), minmax_flipped(x)
    assert torch.equal(scale, moved_scale) and torch.equal(zero, moved_zero)
    changed = moved != codes
    step = (moved.int() - codes.int()).abs()
    assert bool((step[changed] == 1).all())
    s, z = (t.repeat_interleave(BLOCK)[:n] for t in (scale, zero))
    # the edge between codes k and k + 1 lies at z + (k + ½)·s
    edge = z + (torch.minimum(moved, codes).double() + 0.5) * s
    window = NEAR_TIE_ULPS * EPS * (x.abs() + z.abs())
    # a few ulps more than the window: the edge itself is computed in float64 from rounded s and z
    slack = 4 * EPS * (x.abs() + z.abs() + 255 * s)
    assert bool(((x.double() - edge).abs()[changed] <= (window + slack)[changed]).all())
    # near-ties are rare in random data (a 2-ulp window against a code step of range/255: ≲ 3e-4 of the elements);
    # a count, not a fraction, so that one near-tie among a few elements (n can be 3, one element not an
    # extreme) is not a failure
    assert changed.sum() <= 1 + 0.01 * n


def test_a_value_on_an_edge_takes_the_other_side_and_one_off_it_does_not():
    x = torch.tensor([0.0, 255.0, 10.5, 10.3, 200.5])  # s = 1, z = 0: 10.5 and 200.5 lie on edges
    codes = minmax_8bit.quantize(x, BLOCK)[0]
    moved = minmax_flipped(x)[0]
    assert codes.tolist() == [0, 255, 10, 10, 200]  # round half to even
    assert moved.tolist() == [0, 255, 11, 10, 201]


@given(st.integers(0, 2**31 - 1), st.floats(1e-6, 1e6))
def test_blockwise_codes_keep_their_absmax_and_rarely_move(seed, magnitude):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * 256 + 5, generator=gen) * magnitude
    codes, absmax = blockwise_8bit.quantize(x, 256)
    moved, moved_absmax = near_ties_flipped(lambda v: blockwise_8bit.quantize(v, 256), x, 256, zero_point=False)
    assert torch.equal(absmax, moved_absmax)
    changed = moved != codes
    assert changed.float().mean() < 0.01
    # a moved code decodes to a neighbour of the original: the two lie on either side of one table edge
    table = blockwise_8bit.code_table()
    assert bool(((table[moved.long()] - table[codes.long()]).abs()[changed] < 0.1).all())
