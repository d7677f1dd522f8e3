"""reference.sharding.blocks_fit_shards: which tensors an 8-bit class may step as local shards under FSDP2, against
its definition element by element (each block's elements on one rank; each rank's blocks the ones torch.chunk
gives it of the block count, so their scales shard as a DTensor does)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.sharding import _chunked, blocks_fit_shards


def fits_by_elements(rows: list[int], width: int, blocksize: int) -> bool:
    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows) * width)
    blocks = torch.arange(owner.numel()) // blocksize
    held = [sorted(set(blocks[owner == r].tolist())) for r in range(len(rows))]
    expected = _chunked(-(-owner.numel() // blocksize), len(rows))
    starts = [sum(expected[:r]) for r in range(len(rows))]
    return all(held[r] == list(range(starts[r], starts[r] + expected[r])) for r in range(len(rows)))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 200), world=st.integers(1, 5), width=st.integers(1, 40), blocksize=st.sampled_from([4, 8, 64]))
def test_blocks_fit_shards_is_its_element_by_element_definition(n, world, width, blocksize):
    rows = _chunked(n, world)
    if min(rows) == 0:  # a tensor with an empty shard is stepped whole before this is asked
        return
    assert blocks_fit_shards(rows, width, blocksize) == fits_by_elements(rows, width, blocksize)


def test_an_aligned_shard_fits_and_a_straddling_one_does_not():
    assert blocks_fit_shards([1024, 1024], 4, 4096)  # distributed_child.Blocks' wide weight
    assert not blocks_fit_shards([1024, 1024], 1, 4096)  # its bias: one block over both ranks
