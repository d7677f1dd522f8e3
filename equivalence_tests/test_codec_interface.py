"""The codec interface every 8-bit class reads and writes its states through (issue 25): `load(state, blocks)` and
`store(state, value, blocks)`, implemented by bitsandbytes' dynamic codec on buckets (optimized.codec) and on
stacks (optimized.stack_codec) and by seed 004's min/max codec (optimized.minmax_codec), with the stacks' states
found by key (`held`, optimized.stack_state)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optimized import codec, minmax_codec, stack_blocks, stack_codec, stack_state
from optimized.kernels import index_tensors, valid_mask
from optimized.layout import build_layout
from reference.blockwise_8bit import TABLE_BINS, code_table


def _bucket(values: torch.Tensor):
    """A bucket of the stack's tensors: (codec module, empty QState, blocks, the values in its layout, unpack)."""
    tensors = list(values.unbind(0))
    layout = build_layout(tensors, "cpu")
    blocks = codec.build_blocks(layout, "cpu")
    flat = layout.empty(torch.float32, "cpu", fill=0)
    for i, t in enumerate(tensors):
        layout.view(flat, i).copy_(t)
    state = codec.empty_state(layout, blocks, "cpu")

    def unpack(x):
        return torch.stack([layout.view(x, i) for i in range(len(tensors))])

    def write(state, value, blocks):  # a bucket zeroes its padding on the way in (store's `valid`)
        codec.store(state, value, blocks, valid=valid_mask(index_tensors(layout)))

    return codec, write, state, blocks.blocks, flat, unpack


def _stack(values: torch.Tensor):
    blocks = stack_codec.blocks_for(tuple(values.shape[1:]), "cpu")
    codes, absmax = stack_codec.quantize(torch.zeros_like(values), blocks)
    return stack_codec, stack_codec.store, codec.QState(codes, absmax), blocks, values, lambda x: x


def _minmax(values: torch.Tensor, feedback: bool):
    ix = stack_blocks.block_index(values[0].numel(), 256, "cpu")
    q, scale, zero = minmax_codec.quantize(torch.zeros_like(values), ix)
    err = torch.zeros_like(values) if feedback else None
    return minmax_codec, minmax_codec.store, minmax_codec.QState(q, scale, zero, err), ix, values, lambda x: x


CODECS = {
    "bitsandbytes on a bucket": _bucket,
    "bitsandbytes on a stack": _stack,
    "min/max": lambda v: _minmax(v, feedback=False),
    "min/max with error feedback": lambda v: _minmax(v, feedback=True),
}

shapes = st.one_of(st.tuples(st.integers(1, 9000)), st.tuples(st.integers(1, 70), st.integers(1, 70)))


def _half_step(module) -> float:
    """The most a stored element may move, per unit of the largest |value|: half the widest gap between adjacent
    codes of the dynamic code plus one bin of its lookup table (bitsandbytes), or half of s_b = (max − min)/255
    ≤ 2·max|x|/255 (min/max); with a factor for the fp32 arithmetic."""
    if module is minmax_codec:
        return 1 / 255 * (1 + 1e-5)
    code = code_table("cpu").sort().values
    return (float(code.diff().max()) / 2 + 2 / (TABLE_BINS - 1)) * (1 + 1e-5)


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=25, deadline=None)
@given(shape=shapes, count=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_store_then_load_is_the_codec_round_trip(name, shape, count, seed):
    """`store` writes the state's parts in place and `load` then returns fp32 values within half a code step of
    what was stored (with feedback: the value exactly, once the error it leaves is added back)."""
    values = torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))
    module, write, state, blocks, value, unpack = CODECS[name](values)
    pointers = [part.data_ptr() for part in state if part is not None]
    write(state, value, blocks)
    assert [part.data_ptr() for part in state if part is not None] == pointers
    loaded = unpack(module.load(state, blocks))
    assert loaded.dtype == torch.float32 and loaded.shape == values.shape
    scale = float(values.abs().amax())
    if getattr(state, "err", None) is None:
        assert float((loaded - values).abs().max()) <= _half_step(module) * scale
    else:
        assert float((loaded + state.err - values).abs().max()) <= 1e-6 * scale  # one fp32 rounding of x − D(q)


@pytest.mark.parametrize("module", [codec, stack_codec, minmax_codec], ids=lambda m: m.__name__)
def test_a_plain_state_is_read_as_stored_and_written_in_place(module):
    state = torch.randn(3, 5).to(torch.bfloat16)
    assert module.load(state, None) is state
    value = torch.randn(3, 5).to(torch.bfloat16)
    pointer = state.data_ptr()
    module.store(state, value, None)
    assert state.data_ptr() == pointer and torch.equal(state, value)


@pytest.mark.parametrize("module", [stack_codec, minmax_codec], ids=lambda m: m.__name__)
def test_a_stack_state_is_found_by_key_and_rebound_only_on_a_new_dtype(module):
    """`held` gives the codec's QState where the key's parts are in the dict, else the plain tensor; a plain state
    given a value of another dtype is rebound, as the reference's `state[key] = value` does, and one of its own
    dtype is written in place."""
    values = torch.randn(2, 300)
    quantized = _stack(values) if module is stack_codec else _minmax(values, feedback=True)
    parts = dict(zip(module.PARTS, quantized[2], strict=True))
    st = {"plain": torch.zeros(2, 300, dtype=torch.bfloat16), **{f"k_{part}": v for part, v in parts.items()}}
    assert isinstance(module.held(st, "k"), module.QState) and module.held(st, "plain") is st["plain"]
    assert stack_state.is_quantized(st, "k") and not stack_state.is_quantized(st, "plain")

    held = st["plain"]
    stack_state.store(st, "plain", torch.ones(2, 300, dtype=torch.bfloat16), module, None)
    assert st["plain"] is held and bool((held == 1).all())
    wider = torch.full((2, 300), 2.0)
    stack_state.store(st, "plain", wider, module, None)
    assert st["plain"] is wider

    blocks = quantized[3]
    stack_state.store(st, "k", values, module, blocks)
    assert torch.equal(stack_state.load(st, "k", module, blocks), module.load(module.held(st, "k"), blocks))
