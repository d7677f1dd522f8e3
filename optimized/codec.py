"""Blockwise dynamic 8-bit state inside the fused step (spec T19a; readable twin: reference.blockwise_8bit).

A quantised state of a bucket is a `QState`: uint8 codes in the bucket's [N, C] layout and one fp32
absmax per block. Blocks are B consecutive elements *of one tensor* (B = 4096 = B / C rows of the layout),
as bitsandbytes cuts each tensor separately; a tensor's last block may be short, and the layout's zero
padding never raises an absmax. `dequantize` and `quantize` are traced into the compiled passes, so a
state is read as codes, updated in fp32 registers and written back as codes with no fp32 copy of it.

The code index is bitsandbytes' CPU rule (`reference.blockwise_8bit.table_code_index`): the normalised
v = x/N_b picks bin ⌊(v + 1)/2·65535 + ½⌋ of a 2^16-entry table. On the same fp32 input the codes are
the reference's; inputs that differ by round-off can land one code apart at a bin edge.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from reference import blockwise_8bit as readable

from .layout import Layout
from .segment_ops import segment_amax


class QState(NamedTuple):
    """A state in bitsandbytes' format: codes in the layout's shape and one absmax per block (a bucket: [N, C]
    and [nblocks]; a stack, optimized.stack_codec: [c, *shape] and [c, n_blocks])."""

    codes: torch.Tensor  # uint8
    absmax: torch.Tensor  # float32


class Blocks(NamedTuple):
    """Where the blocks are: graph inputs shared by every quantised state of a bucket."""

    row_block: torch.Tensor  # [N] int64: the block of each row
    row_tensor: torch.Tensor  # [N] int64: the tensor of each row (T for ALLoRA's dummy row)
    block_tensor: torch.Tensor  # [nblocks] int64: the tensor of each block
    code: torch.Tensor  # [256] float32: the signed dynamic tree code
    table: torch.Tensor  # [65536] uint8: bin → code index
    zero: torch.Tensor  # 0-d uint8: the code of an exact 0 in a block that is not all 0 (reference.zero_code)


class BlockLayout(NamedTuple):
    blocks: Blocks
    block_start: list  # first block of each tensor (None: the tensor has no rows here)
    skipped: list  # rows of each tensor's first block that precede its own (a shard's: held by another rank)


def _blocks(row_counts, device, rows_per_block, exact_zero: bool, first_rows=None) -> BlockLayout:
    """Blocks of `rows_per_block` rows, cut per tensor; `row_counts[i]` rows of tensor i (None: none).
    `first_rows[i]`: where tensor i is an FSDP2 shard, the whole tensor's row it starts at, so its blocks are
    the whole tensor's, cut at the shard's ends."""
    row_block, row_tensor, block_tensor, block_start, skipped = [], [], [], [], []
    for i, rows in enumerate(row_counts):
        skip = 0 if first_rows is None or i >= len(first_rows) else first_rows[i] % rows_per_block
        skipped.append(skip)
        if rows is None:
            block_start.append(None)
            continue
        block_start.append(len(block_tensor))
        row_block += [len(block_tensor) + (skip + r) // rows_per_block for r in range(rows)]
        row_tensor += [i] * rows
        block_tensor += [i] * max(1, math.ceil((skip + rows) / rows_per_block))
    blocks = Blocks(
        *(torch.tensor(x, dtype=torch.int64, device=device) for x in (row_block, row_tensor, block_tensor)),
        code=readable.code_table(device),
        table=readable.code_lookup_table(device),
        zero=zero_code(exact_zero, device),
    )
    return BlockLayout(blocks, block_start, skipped)


def zero_code(exact_zero: bool, device) -> torch.Tensor:
    return torch.tensor(readable.zero_code(exact_zero), dtype=torch.uint8, device=device)


def build_blocks(layout: Layout, device, exact_zero: bool = False) -> BlockLayout:
    """Blocks of the element states: B = 4096 elements = B / C rows of the layout, per tensor. `exact_zero`: the
    corrected mode's code for 0 (reference.blockwise_8bit.quantize)."""
    rows_per_block, rest = divmod(readable.BLOCKSIZE, layout.chunk)
    assert rest == 0, "a block must be whole rows"
    rows = [layout.row_slice(i).stop - layout.chunk_start[i] for i in range(layout.ntensors)]
    return _blocks(rows, device, rows_per_block, exact_zero)


def build_row_blocks(layout: Layout, device, exact_zero: bool = False, first_rows=None) -> BlockLayout:
    """Blocks of ALLoRA's ρ table ([nrows + 1], one entry per row of each 2-D tensor, as the reference's
    [rows, 1] state): B = 4096 entries per tensor; the last (dummy, ρ = 1) entry is a block of its own.
    `first_rows`: each tensor's first row in its whole tensor (FSDP2 shards; see `_blocks`)."""
    rows = [shape[0] if matrix else None for shape, matrix in zip(layout.shapes, layout.is_matrix, strict=True)]
    return _blocks([*rows, 1], device, readable.BLOCKSIZE, exact_zero, first_rows)


def empty_state(layout: Layout, blocks: BlockLayout, device) -> QState:
    codes = torch.zeros((layout.nchunks, layout.chunk), dtype=torch.uint8, device=device)
    return QState(codes, torch.zeros(blocks.blocks.block_tensor.numel(), dtype=torch.float32, device=device))


def dequantize(q: QState, blocks: Blocks) -> torch.Tensor:
    """x̂ = code[q] · N_b, float32 [N, C]."""
    # int32 indices: inductor's CPU gather from int64 ones costs twice as much
    return blocks.code[q.codes.int()] * q.absmax[blocks.row_block].view(-1, 1)


def quantize(x: torch.Tensor, blocks: Blocks, like_absmax: torch.Tensor, over_ranks=None):
    """x (float32 [N, C], zero on padding) → (codes, absmax). `over_ranks`: absmax → each block's absmax over
    the ranks that hold part of it (FSDP2 shards of ALLoRA's ρ)."""
    # N_b = max |x| over the block's rows
    absmax = segment_amax(x.abs().amax(dim=1), blocks.row_block, like_absmax)
    absmax = absmax if over_ranks is None else over_ranks(absmax)
    return encode(x, absmax[blocks.row_block].view(-1, 1), blocks.table, blocks.zero), absmax


def encode(x: torch.Tensor, n_b: torch.Tensor, table: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The code index of each x given its block's absmax n_b (broadcast against x): bitsandbytes' CPU rule, with
    `zero` for an exact 0 in a block that is not all 0 (the rule's own code upstream, the code of 0 when fixed)."""
    # v = x·(1/N_b), the reciprocal first as bitsandbytes computes it (x / N_b rounds differently, and a value
    # within round-off of a bin edge then takes the neighbouring code); an all-zero block is taken as v = −1
    # (code 0), as bitsandbytes does (a select, not nan_to_num, which inductor's CPU backend runs one element
    # at a time)
    v = torch.where(n_b > 0, x * (1.0 / n_b), -1.0).clamp(-1.0, 1.0)
    # the clamp keeps a NaN (whose int conversion is undefined) inside the table
    k = ((v + 1) * 0.5 * (readable.TABLE_BINS - 1) + 0.5).int().clamp(0, readable.TABLE_BINS - 1)
    return select_bytes((x == 0) & (n_b > 0), zero, table[k])


def select_bytes(cond: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """torch.where(cond, new, old) for uint8 values, selected in int32 lanes and narrowed once: inductor's CPU
    code selects between uint8 vectors element by element (16M elements: 28 against 10 ms per encode, 27
    against 3 ms for a select under a row mask)."""
    return torch.where(cond, new.int(), old.int()).to(torch.uint8)


def load(buf, blocks: Blocks | None) -> torch.Tensor:
    """The codec interface's read (shared by optimized.stack_codec and optimized.minmax_codec): a QState
    de-quantised to float32, or a plain (unquantised) state as stored."""
    return dequantize(buf, blocks) if isinstance(buf, QState) else buf


def store(
    buf, value: torch.Tensor, blocks: Blocks | None, rows=None, tensors=None, valid=None, over_ranks=None
) -> None:
    """The codec interface's write: a QState re-quantised, a plain state copied into. A bucket's extras: only
    where `rows` ([N, 1] bool, None = everywhere); blocks of tensors not in `tensors` ([T] bool) keep their
    absmax, rows outside `rows` keep their codes. `valid` ([N, C] bool) zeroes the padding first, so it never
    enters an absmax. `over_ranks`: see `quantize`."""
    if not isinstance(buf, QState):
        buf.copy_(value if rows is None else torch.where(rows, value, buf.float()))
        return
    if valid is not None:
        value = torch.where(valid, value, 0.0)
    codes, absmax = quantize(value, blocks, buf.absmax, over_ranks)
    if rows is not None:
        codes = select_bytes(rows, codes, buf.codes)
        absmax = torch.where(tensors[blocks.block_tensor], absmax, buf.absmax)
    buf.codes.copy_(codes)
    buf.absmax.copy_(absmax)


# ---------------------------------------------------------------- eager helpers (start, import, export)
def empty_row_state(layout: Layout, rows: BlockLayout, device) -> QState:
    """ALLoRA's ρ table, all ones (code 255 = 1.0, absmax 1), the value of rows not yet started."""
    codes = torch.full((layout.nrows + 1, 1), 255, dtype=torch.uint8, device=device)
    return QState(codes, torch.ones(rows.blocks.block_tensor.numel(), dtype=torch.float32, device=device))


def fill(q: QState, value: torch.Tensor, blocks: Blocks, valid, tensors: torch.Tensor, over_ranks=None) -> None:
    """Quantise `value` into the rows and blocks of the tensors in `tensors` ([T] bool)."""
    ext = torch.cat([tensors, tensors.new_zeros(1)])  # index T: ALLoRA's dummy row, never written
    store(q, value, blocks, ext[blocks.row_tensor].view(-1, 1), ext, valid, over_ranks)


def fill_constant(q: QState, value: float, blocks: Blocks, valid, tensors: torch.Tensor) -> None:
    """Set every element of the tensors in `tensors` ([T] bool) to `value`, writing codes directly: what
    `fill` would store for a constant (absmax |value|; the code of ±1, or code 0 for an all-zero block;
    padding gets the code of 0), with no fp32 copy of the state. `valid`: [N, C] bool."""
    n_b = abs(float(value))
    unit = -1.0 if n_b == 0 else value / n_b
    rows = tensors[blocks.row_tensor].view(-1, 1)
    codes = torch.where(valid, _code_of(unit), padding_code(n_b, blocks)).to(torch.uint8)
    q.codes.copy_(torch.where(rows, codes, q.codes))
    q.absmax.masked_fill_(tensors[blocks.block_tensor], n_b)


def _code_of(v: float) -> int:
    """quantize's code for one normalised value."""
    return int(readable.table_code_index(torch.tensor(v, dtype=torch.float32)))


def padding_code(absmax: float, blocks: Blocks) -> int:
    """The code `quantize` writes on padding: that of 0, or of −1 in an all-zero block (0 · 1/0 is NaN there)."""
    return _code_of(-1.0) if absmax == 0 else int(blocks.zero)


def block_range(blocks: BlockLayout, i: int, n: int) -> slice:
    """The blocks of tensor i, whose `n` elements (rows, in ALLoRA's ρ table) the layout holds."""
    start = blocks.block_start[i]
    return slice(start, start + math.ceil((blocks.skipped[i] + n) / readable.BLOCKSIZE))


def tensor_views(q: QState, layout: Layout, blocks: BlockLayout, i: int):
    """Tensor i's (codes with its shape, absmax) as views: the reference's `<key>_q` and `<key>_q_scale`."""
    return layout.view(q.codes, i), q.absmax[block_range(blocks, i, layout.numels[i])]


def load_tensor(q: QState, layout: Layout, blocks: BlockLayout, i: int, codes, absmax) -> None:
    """Tensor i's saved codes and absmax; its padding gets the code `quantize` writes there, so that a resumed
    run holds the same bytes as one that never stopped."""
    held = block_range(blocks, i, layout.numels[i])
    q.absmax[held] = absmax.to(q.absmax)
    rows = layout.row_slice(i)
    last = float(q.absmax[held.stop - 1])
    q.codes[rows.stop - 1] = padding_code(last, blocks.blocks)  # only the last row is padded
    layout.view(q.codes, i).copy_(codes.reshape(layout.shapes[i]))


def _rows(layout: Layout, i: int) -> slice:
    return slice(layout.row_start[i], layout.row_start[i] + layout.shapes[i][0])


def row_views(q: QState, layout: Layout, rows: BlockLayout, i: int):
    """Matrix i's ρ as the reference stores it, as views: codes [rows, 1] and absmax."""
    return q.codes[_rows(layout, i)], q.absmax[block_range(rows, i, layout.shapes[i][0])]


def load_rows(q: QState, layout: Layout, rows: BlockLayout, i: int, codes, absmax) -> None:
    q.codes[_rows(layout, i)] = codes.reshape(-1, 1)
    q.absmax[block_range(rows, i, layout.shapes[i][0])] = absmax.to(q.absmax)


def nbytes(buf) -> int:
    if isinstance(buf, QState):
        return buf.codes.numel() + buf.absmax.numel() * 4
    return buf.numel() * buf.element_size()
