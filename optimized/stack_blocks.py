"""The blocks of a stack of same-shape tensors, shared by the stack codecs (minmax_codec, stack_codec): B
consecutive elements of one tensor form a block, and a short last block is read padded with the tensor's own
last element, which moves neither a block's min, its max nor its absmax (the references pad alike)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class BlockIndex(NamedTuple):
    """Where the blocks of one tensor size are, as index tensors (graph inputs, so the compiled step indexes
    by loads rather than by symbolic arithmetic on the size, which inductor's CPU tiling cannot simplify)."""

    gather: torch.Tensor  # [n_blocks, B] int64: element j of block b; past the end, the last element
    block_of: torch.Tensor  # [n] int64: the block of each element


def block_index(n: int, block_size: int, device) -> BlockIndex:
    n_blocks = -(-n // block_size)
    gather = torch.arange(n_blocks * block_size, device=device).clamp(max=n - 1).reshape(n_blocks, block_size)
    return BlockIndex(gather, torch.arange(n, device=device) // block_size)


def rows(x: torch.Tensor) -> torch.Tensor:
    """[c, *shape] → [c, n]."""
    return x.reshape(x.shape[0], -1)
