"""Each technique kernel of the fast path against its reference function (hypothesis over shapes)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .technique_cases import TECHNIQUE_CASES
from .tolerances import TECHNIQUE_FP32, scaled_error

dims = st.integers(min_value=1, max_value=40)
shape = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 700)),
    st.tuples(dims, dims),
    st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3)),
)
shape_lists = st.lists(shape, min_size=1, max_size=5)


@pytest.mark.parametrize("case", TECHNIQUE_CASES, ids=lambda c: c.name)
@given(shapes=shape_lists, seed=st.integers(0, 2**16))
def test_kernel_matches_reference(case, shapes, seed):
    results = case.run(torch.Generator().manual_seed(seed), shapes)
    assert results, "a case must compare something"
    for name, ref, opt, *terms in results:
        assert ref.shape == opt.shape, name
        err = scaled_error(ref, opt, *terms)
        assert err <= TECHNIQUE_FP32.bound, f"{case.name}: {name} error {err:.3e} > {TECHNIQUE_FP32.bound}"


def test_kernels_with_lora_shapes_and_outliers():
    """LoRA-sized factors and a gradient outlier that dominates its group's L1 mass (AGR α ≈ 1)."""
    shapes = [(16, 768), (768, 16), (1,)]
    for case in TECHNIQUE_CASES:
        for _, ref, opt, *terms in case.run(torch.Generator().manual_seed(7), shapes):
            assert scaled_error(ref, opt, *terms) <= TECHNIQUE_FP32.bound, case.name
