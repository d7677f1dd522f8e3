"""The flat buffers' row width (optimized.layout.row_width): WIDE rows unless they would pad a bucket by more than
PADDING_GOAL, then NARROW ones. Both widths compute what the reference computes, in every flat-buffer class and
both modes, and on many small tensors the padding stays under issue 29's 10 % of state bytes.

The harness's shapes (a 0-d, a 37-element and a 5×7 tensor beside the LoRA-like pairs) take NARROW rows, so every
other lockstep test runs those; here WIDE ones are forced on the same cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimized
import reference
from optimized import layout as flat_layout
from optimized.layout import NARROW, PADDING_GOAL, WIDE, build_layout, row_width

from .cases.eight_bit import param_bound
from .cases.frozen import FLAT, held_bytes
from .cases.hina import HINA_CASES, lockstep_bounds
from .cases.hina import lockstep as hina_lockstep
from .harness import OPTIMIZER_CASES, lockstep
from .tolerances import LOCKSTEP_8BIT_FLIPS, LOCKSTEP_8BIT_STATES, lockstep_tolerance, momentum_tolerance

# issue 29: padding on many small tensors ≤ 10 % of state bytes. NARROW rows pad a tensor by < 32 elements,
# under 10 % of any tensor from 320 elements (a LayerNorm of SD's narrowest width), so the sizes drawn below
# start there. Measured on 15 random lists of such sizes: at most 3.1 % (fp32 states; 10.0 % with WIDE rows
# forced), and the 8-bit classes hold no more than the reference (2026-12-03).
PADDING_SHARE = 0.10


@settings(max_examples=200, deadline=None)
@given(numels=st.lists(st.integers(1, 5 * WIDE), min_size=1, max_size=12))
def test_the_rule_keeps_padding_under_its_goal_or_takes_narrow_rows(numels):
    tensors = [torch.empty(n) for n in numels]
    chosen = build_layout(tensors, "cpu")
    wide = build_layout(tensors, "cpu", chunk=WIDE)
    padding = wide.nchunks * WIDE - sum(numels)
    assert chosen.chunk == row_width(numels) == (WIDE if padding <= PADDING_GOAL * sum(numels) else NARROW)
    for layout in (chosen, wide, build_layout(tensors, "cpu", chunk=NARROW)):
        # each tensor's rows are its own, and hold exactly its elements
        assert int(layout.chunk_valid.sum()) == sum(numels)
        assert layout.nchunks == sum(max(1, math.ceil(n / layout.chunk)) for n in numels)
        flat = torch.arange(layout.nchunks * layout.chunk, dtype=torch.float64).view(layout.nchunks, -1)
        seen = torch.cat([layout.view(flat, i).reshape(-1) for i in range(len(numels))])
        assert seen.unique().numel() == sum(numels)


def _lockstep_bounds(name, compat, worst) -> dict:
    """The bounds each class's own lockstep test applies (fp32)."""
    if name == "HinaAdamWOptimizer":
        return lockstep_bounds(HINA_CASES[0], torch.float32, worst)
    if name.endswith("8bit"):
        bounds = dict.fromkeys(worst, LOCKSTEP_8BIT_STATES.bound)
        return {**bounds, "params": param_bound(name, compat, torch.float32), "code_flips": LOCKSTEP_8BIT_FLIPS.bound}
    bounds = dict.fromkeys(worst, lockstep_tolerance(torch.float32).bound)
    return {**bounds, "exp_avg": momentum_tolerance(torch.float32, name, compat).bound}


@pytest.mark.parametrize("compat", ["fixed", "upstream"])
@pytest.mark.parametrize("name", FLAT)
def test_wide_rows_agree_with_the_reference_in_lockstep(monkeypatch, name, compat):
    monkeypatch.setattr(flat_layout, "row_width", lambda numels: WIDE)
    if name == "HinaAdamWOptimizer":
        worst = hina_lockstep(HINA_CASES[0], torch.float32, compat)
    else:
        worst = lockstep(OPTIMIZER_CASES[0], torch.float32, compat, name=name)
    assert "params" in worst and len(worst) > 4
    bounds = _lockstep_bounds(name, compat, worst)
    for key, err in worst.items():
        assert err <= bounds[key], f"{key}: {err:.3e} > {bounds[key]}"


def _many_small(package, name, shapes):
    params = [torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(i)))
              for i, shape in enumerate(shapes)]  # fmt: skip
    kwargs = {} if name == "HinaAdamWOptimizer" else {"warmup_steps": 4}
    opt = getattr(package, name)(params, lr=1e-3, **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return held_bytes(opt)


SMALL = st.one_of(st.tuples(st.integers(320, 4000)), st.tuples(st.integers(1, 16), st.integers(320, 1280)))


@pytest.mark.parametrize("name", FLAT)
@settings(max_examples=6, deadline=None)
@given(shapes=st.lists(SMALL, min_size=2, max_size=24))
def test_padding_on_many_small_tensors_stays_under_a_tenth_of_the_state(name, shapes):
    ref, fast = _many_small(reference, name, shapes), _many_small(optimized, name, shapes)
    assert fast <= (1 + PADDING_SHARE) * ref, (fast, ref)
