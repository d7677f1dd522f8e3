"""optimized.segment_ops: per-segment sums and maxima over sorted segment ids (a bucket's rows, its blocks),
by both CPU paths (NumPy's reduceat for long runs, ATen's index_add_/scatter_reduce_ otherwise)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optimized import segment_ops
from optimized.segment_ops import segment_amax, segment_sum

PATHS = {"reduceat": 0, "aten": 10**9}  # LONG_RUN forcing each path


@st.composite
def segments(draw):
    """Sorted ids in [0, T) with some ids absent (tensors or blocks without rows), and values."""
    T = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(0, 5), min_size=T, max_size=T).filter(lambda c: sum(c) > 0))
    ids = np.repeat(np.arange(T), counts)
    values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=len(ids), max_size=len(ids)))
    return torch.tensor(values, dtype=torch.float32), torch.from_numpy(ids), T


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None)
@given(case=segments())
def test_segment_sum_and_amax_match_a_loop(path, case):
    values, ids, T = case
    segment_ops.LONG_RUN = PATHS[path]
    sums = segment_sum(values, ids, torch.zeros(T, dtype=torch.float64))
    amax = segment_amax(values.abs(), ids, torch.zeros(T, dtype=torch.float32))
    for k in range(T):
        mine = values[ids == k].double()
        # fp64 sums of fp32 values: exact up to fp64 round-off in any order
        assert abs(float(sums[k]) - float(mine.sum())) <= 1e-12 * max(1.0, float(mine.abs().sum()))
        assert float(amax[k]) == (float(mine.abs().max()) if len(mine) else 0.0)
    assert sums.dtype == torch.float64 and amax.dtype == torch.float32


@pytest.mark.parametrize("path", PATHS)
def test_nan_reaches_its_segment_only(path):
    segment_ops.LONG_RUN = PATHS[path]
    values = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    sums = segment_sum(values, torch.tensor([0, 0, 1, 1]), torch.zeros(2, dtype=torch.float64))
    assert torch.isnan(sums[0]) and sums[1] == 5.0


@pytest.fixture(autouse=True)
def _restore_long_run():
    saved = segment_ops.LONG_RUN
    yield
    segment_ops.LONG_RUN = saved
