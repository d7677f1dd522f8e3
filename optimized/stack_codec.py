"""bitsandbytes' blockwise dynamic 8-bit codec (spec T19a; readable twin: reference.blockwise_8bit) on a stack
of same-shape tensors, traceable into a compiled step.

A state `k` of a stack of c tensors is stored, as the reference's Blockwise8bitStates stores it per tensor,
as `k_q` (uint8 codes, [c, *shape]) and `k_q_scale` (fp32 block absmax, [c, n_blocks]). Blocks are B
consecutive elements of one tensor; the short last block is read padded with the tensor's last element
(optimized.stack_blocks), which never raises its absmax. The code index is optimized.codec's (bitsandbytes'
CPU rule), so on the same fp32 input the codes are the reference's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from reference import blockwise_8bit as readable

from .codec import encode, zero_code
from .stack_blocks import BlockIndex, block_index, rows

PARTS = ("q", "q_scale")


class Blocks(NamedTuple):
    """Graph inputs: where the blocks of one tensor size are, and the code tables."""

    index: BlockIndex | None  # None: the blocks are a reshape of the rows
    code: torch.Tensor  # [256] float32: the signed dynamic tree code
    table: torch.Tensor  # [65536] uint8: bin → code index
    zero: torch.Tensor  # 0-d uint8: the code of an exact 0 (see codec.Blocks)


def blocks_for(shape, device, exact_zero: bool = False) -> Blocks:
    """The blocks of a stack of tensors of `shape`. Vectors whose size is a multiple of B read their blocks
    as a reshape (16M elements: 35 rather than 70 ms per state); every other tensor gathers them, padded:
    reading a matrix's rows as blocks of 4,096 made inductor recompute each element's 2-D position (a
    symbolic division per element), 4× slower on the LoRA-like set."""
    n = math.prod(shape)
    whole = len(shape) <= 1 and n % readable.BLOCKSIZE == 0
    index = None if whole else block_index(n, readable.BLOCKSIZE, device)
    return Blocks(index, readable.code_table(device), readable.code_lookup_table(device),
                  zero_code(exact_zero, device))  # fmt: skip


def _per_element(absmax: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Each element's block absmax, broadcast against the [c, n] rows or [c, n_blocks, B] blocks."""
    return absmax[:, blocks.index.block_of] if blocks.index is not None else absmax[:, :, None]


def _blocked(x: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """[c, n] rows as [c, n_blocks, B] when the blocks are a reshape, else unchanged."""
    return x if blocks.index is not None else x.reshape(x.shape[0], -1, readable.BLOCKSIZE)


def quantize(x: torch.Tensor, blocks: Blocks):
    """x [c, *shape] → (codes uint8 [c, *shape], absmax fp32 [c, n_blocks])."""
    flat = _blocked(rows(x.float()), blocks)
    # N_b = max |x| over the block (a gather of the padded blocks unless they are a reshape)
    magnitude = flat.abs()
    absmax = (magnitude[:, blocks.index.gather] if blocks.index is not None else magnitude).amax(dim=2)
    return encode(flat, _per_element(absmax, blocks), blocks.table, blocks.zero).reshape(x.shape), absmax


def dequantize(q: torch.Tensor, absmax: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """x̂ = code[q] · N_b (fp32, q's shape); int32 indices, as optimized.codec reads them."""
    codes = _blocked(rows(q), blocks)
    return (blocks.code[codes.int()] * _per_element(absmax, blocks)).reshape(q.shape)


def load(st: dict, key: str, blocks: Blocks | None) -> torch.Tensor:
    """State `key` of the stack: de-quantised, or as stored."""
    if f"{key}_q" in st:
        return dequantize(st[f"{key}_q"], st[f"{key}_q_scale"], blocks)
    return st[key]


def store(st: dict, key: str, value: torch.Tensor, blocks: Blocks | None) -> None:
    """Write state `key` in place: re-quantised, or copied. An unquantised state of another dtype than the
    value is rebound to it, as the reference's `state[key] = value` does (upstream bf16: a state computed
    from an fp32 term becomes fp32)."""
    if f"{key}_q" in st:
        q, absmax = quantize(value, blocks)
        st[f"{key}_q"].copy_(q)
        st[f"{key}_q_scale"].copy_(absmax)
    elif st[key].dtype == value.dtype:
        st[key].copy_(value)
    else:
        st[key] = value
