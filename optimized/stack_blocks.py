"""The blocks of a stack of same-shape tensors, shared by the stack codecs (minmax_codec, stack_codec): B
consecutive elements of one tensor form a block, and a short last block is read padded with the tensor's own
last element, which moves neither a block's min, its max nor its absmax (the references pad alike).

A codec works on a stack's elements in their *blocked* form (`blocked`): [c, n] rows gathered by index, or,
where the blocks are a reshape of the rows, [c, n_blocks, B]. `block_values` gives each block's elements
for a reduction over dim 2, and `per_element` a per-block value beside each element of the blocked form.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class BlockIndex(NamedTuple):
    """Where the blocks of one tensor size are, as index tensors (graph inputs, so the compiled step indexes
    by loads rather than by symbolic arithmetic on the size, which inductor's CPU tiling cannot simplify).
    `gather` and `block_of` are None where the blocks are a reshape of the rows."""

    gather: torch.Tensor | None  # [n_blocks, B] int64: element j of block b; past the end, the last element
    block_of: torch.Tensor | None  # [n] int64: the block of each element
    size: int  # B


def block_index(shape, block_size: int, device) -> BlockIndex:
    """The blocks of a tensor of `shape`. A vector whose size is a multiple of B reads its blocks as a
    reshape, which needs no index loads (16M elements: 35 rather than 70 ms per state of the dynamic codec);
    every other tensor gathers them, padded: reading a matrix's rows as blocks of B made inductor recompute
    each element's 2-D position (a symbolic division per element), 4× slower on the LoRA-like set."""
    n = math.prod(shape)
    if len(shape) <= 1 and n % block_size == 0:
        return BlockIndex(None, None, block_size)
    n_blocks = -(-n // block_size)
    gather = torch.arange(n_blocks * block_size, device=device).clamp(max=n - 1).reshape(n_blocks, block_size)
    return BlockIndex(gather, torch.arange(n, device=device) // block_size, block_size)


def rows(x: torch.Tensor) -> torch.Tensor:
    """[c, *shape] → [c, n]."""
    return x.reshape(x.shape[0], -1)


def blocked(x: torch.Tensor, ix: BlockIndex) -> torch.Tensor:
    """[c, *shape] → the blocked form: [c, n], or [c, n_blocks, B] where the blocks are a reshape."""
    flat = rows(x)
    return flat if ix.gather is not None else flat.reshape(flat.shape[0], -1, ix.size)


def block_values(values: torch.Tensor, ix: BlockIndex) -> torch.Tensor:
    """The blocked form → [c, n_blocks, B], each block's elements (a short last block padded with its last)."""
    return values[:, ix.gather] if ix.gather is not None else values


def per_element(per_block: torch.Tensor, ix: BlockIndex) -> torch.Tensor:
    """[c, n_blocks] → each element's block value, broadcast against the blocked form."""
    return per_block[:, ix.block_of] if ix.block_of is not None else per_block[:, :, None]
