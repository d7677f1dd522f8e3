"""optimized.bitpack: the 1-bit storage of the 8-bit buckets' warm-up polarity round-trips exactly, and
a tensor's bits never touch its neighbours'. Inside the compiled passes it is checked by the 8-bit
lockstep tests, which compare the exported `last_polarity` with the reference's at every step."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optimized import bitpack
from optimized.layout import NARROW, WIDE, build_layout


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), chunk=st.sampled_from([WIDE, NARROW]), seed=st.integers(0, 2**31 - 1))
def test_pack_then_unpack_is_the_identity(rows, chunk, seed):
    bits = torch.randint(0, 2, (rows, chunk), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = bitpack.pack(bits)
    assert packed.shape == (rows, chunk // bitpack.BITS) and packed.dtype == torch.uint8
    assert torch.equal(bitpack.unpack(packed), bits)
    # bit k of byte j is element k·chunk/8 + j
    j, k = seed % (chunk // 8), seed % 8
    assert bool(packed[0, j] >> k & 1) == bool(bits[0, k * chunk // 8 + j])


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 3 * WIDE + 7), min_size=1, max_size=4), chunk=st.sampled_from([WIDE, NARROW]),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_tensor_bits_round_trip_without_touching_other_tensors(sizes, chunk, seed):
    gen = torch.Generator().manual_seed(seed)
    layout = build_layout([torch.empty(n) for n in sizes], "cpu", chunk=chunk)
    packed = bitpack.empty(layout, "cpu")
    want = [torch.rand(n, generator=gen) < 0.5 for n in sizes]
    for i, bits in enumerate(want):
        bitpack.write_tensor(packed, layout, i, bits)
    for i, bits in enumerate(want):
        assert torch.equal(bitpack.read_tensor(packed, layout, i), bits)
    # padding bits are 0, so a row's unused tail never reads as a polarity
    assert int(bitpack.unpack(packed).sum()) == sum(int(b.sum()) for b in want)
