"""bitsandbytes' blockwise dynamic 8-bit codec (spec T19a; readable twin: reference.blockwise_8bit) on a stack
of same-shape tensors, traceable into a compiled step.

A state `k` of a stack of c tensors is stored, as the reference's Blockwise8bitStates stores it per tensor,
as `k_q` (uint8 codes, [c, *shape]) and `k_q_scale` (fp32 block absmax, [c, n_blocks]): a `codec.QState`,
read and written through the codec interface `load`/`store` (optimized.codec's; `held` finds it). Blocks are B
consecutive elements of one tensor; the short last block is read padded with the tensor's last element
(optimized.stack_blocks), which never raises its absmax. The code index is optimized.codec's (bitsandbytes'
CPU rule), so on the same fp32 input the codes are the reference's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from reference import blockwise_8bit as readable

from .codec import QState, encode, zero_code
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


def held(st: dict, key: str):
    """State `key` of a stack's state dict as the codec interface takes it: a QState, or the plain tensor."""
    return QState(st[f"{key}_q"], st[f"{key}_q_scale"]) if f"{key}_q" in st else st[key]


def load(state, blocks: Blocks | None) -> torch.Tensor:
    """The codec interface's read: a QState de-quantised (fp32), or a plain state as stored."""
    return dequantize(state.codes, state.absmax, blocks) if isinstance(state, QState) else state


def store(state, value: torch.Tensor, blocks: Blocks | None) -> None:
    """The codec interface's write: a QState re-quantised, a plain state copied into."""
    if not isinstance(state, QState):
        state.copy_(value)
        return
    codes, absmax = quantize(value, blocks)
    state.codes.copy_(codes)
    state.absmax.copy_(absmax)
