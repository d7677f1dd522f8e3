"""reference.sharding.blocks_fit_shards and blocks_cover_chunks: which tensors an 8-bit class may step as local
shards under FSDP2, against their definitions element by element. The element states' blocks must each lie on one
rank, and be the ones torch.chunk gives it of the block count; ALLoRA's ρ blocks (one entry a row) may be shared,
but each rank must hold rows of the blocks torch.chunk gives it, so their scales shard as a DTensor does."""

from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.sharding import block_scale_span, blocks_cover_chunks, blocks_fit_shards, chunk_sizes


def held_and_chunks(rows: list[int], width: int, blocksize: int) -> tuple[list[set], list[set]]:
    """The blocks each rank holds elements of, and the blocks torch.chunk gives each rank of their count."""
    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows) * width)
    blocks = torch.arange(owner.numel()) // blocksize
    held = [set(blocks[owner == r].tolist()) for r in range(len(rows))]
    counts = chunk_sizes(-(-owner.numel() // blocksize), len(rows))
    chunks = [set(range(sum(counts[:r]), sum(counts[: r + 1]))) for r in range(len(rows))]
    return held, chunks


def fits_by_elements(rows: list[int], width: int, blocksize: int) -> bool:
    held, chunks = held_and_chunks(rows, width, blocksize)
    return held == chunks


def covers_by_elements(rows: list[int], blocksize: int) -> bool:
    held, chunks = held_and_chunks(rows, 1, blocksize)
    return all(chunk <= mine for chunk, mine in zip(chunks, held, strict=True))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 200), world=st.integers(1, 5), width=st.integers(1, 40), blocksize=st.sampled_from([4, 8, 64]))
def test_blocks_fit_shards_is_its_element_by_element_definition(n, world, width, blocksize):
    rows = chunk_sizes(n, world)
    if min(rows) == 0:  # a tensor with an empty shard is stepped whole before this is asked
        return
    assert blocks_fit_shards(rows, width, blocksize) == fits_by_elements(rows, width, blocksize)
    assert blocks_cover_chunks(rows, blocksize) == covers_by_elements(rows, blocksize)
    # the block scales each rank holds: those of the blocks it holds elements (or, by rows, rows) of
    for by_rows in (False, True):
        held, _ = held_and_chunks(rows, 1 if by_rows else width, blocksize)
        for r, count in enumerate(rows):
            p = SimpleNamespace(shape=(n, width))
            whole, first, span = block_scale_span(p, sum(rows[:r]), count, blocksize, by_rows)
            assert set(range(first, first + span)) == held[r]
            assert whole == -(-n * (1 if by_rows else width) // blocksize)


def test_an_aligned_shard_fits_and_a_straddling_one_does_not():
    assert blocks_fit_shards([1024, 1024], 4, 4096)  # distributed_child.Blocks' wide weight
    assert not blocks_fit_shards([1024, 1024], 1, 4096)  # its bias: one block over both ranks
    assert blocks_cover_chunks([1024, 1024], 4096)  # the weight's ρ: rank 0 holds the one block's scale
    assert not blocks_cover_chunks([3, 3, 2], 2)  # rank 1 would save scales 2 and 3, holding rows of blocks 1, 2
