"""Flat, chunked storage for a list of tensors.

Tensor i occupies `nchunks_i = ceil(numel_i / C)` rows of a `[nchunks, C]` buffer, padded with zeros. The
row width C is WIDE, or NARROW for a bucket of small tensors that WIDE rows would pad by more than
PADDING_GOAL (`row_width`). A per-tensor reduction is a row sum followed by a segment sum over rows, so its
cost and its compiled graph do not depend on how many tensors share the buffer. Row and dim-0 column reductions (ALLoRA,
TAM) work on runs of same-shape tensors, which buckets keep adjacent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

WIDE = 256  # elements per row; padding per tensor is < the row width
NARROW = 32  # rows of small tensors (a 320-element LayerNorm weight pads to 512 elements in WIDE rows, 320 here)
PADDING_GOAL = 1 / 32  # the most padding, as a share of a bucket's elements, that WIDE rows may add


def row_width(numels) -> int:
    """WIDE, unless its rows would pad the tensors by more than PADDING_GOAL of their elements: NARROW. Wide rows
    cost less per row (the per-row index and partial sums); narrow ones waste less per tensor."""
    padding = sum(max(1, math.ceil(n / WIDE)) * WIDE - n for n in numels)
    return WIDE if padding <= PADDING_GOAL * sum(numels) else NARROW


@dataclass
class Layout:
    """Where each tensor of a bucket lives, plus the index tensors the kernels need (on device)."""

    shapes: list
    numels: list
    chunk_start: list  # first row of each tensor
    nchunks: int
    chunk: int  # elements per row (WIDE or NARROW)
    chunk_tensor: torch.Tensor  # [nchunks] int64: tensor index of each row
    chunk_valid: torch.Tensor  # [nchunks, 1] int64: number of real elements in the row
    numel_t: torch.Tensor  # [T] float64: element counts
    nrows: int  # rows of all 2-D tensors; id nrows is the dummy row
    row_start: list  # first row id of each 2-D tensor (None elsewhere)
    is_matrix: list
    shape_classes: list  # (first tensor, count, shape) of each run of same-shape tensors
    strides: list  # each tensor's view strides: None (row-major), or its own (see `kept_strides`)

    @property
    def ntensors(self) -> int:
        return len(self.shapes)

    def view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Tensor i as a view of a [nchunks, chunk] buffer."""
        start = self.chunk_start[i] * self.chunk
        segment = flat.view(-1)[start : start + self.numels[i]]
        strides = self.strides[i]
        return segment.view(self.shapes[i]) if strides is None else segment.as_strided(self.shapes[i], strides)

    def views(self, flat: torch.Tensor) -> list:
        return [self.view(flat, i) for i in range(self.ntensors)]

    def empty(self, dtype, device, fill=None) -> torch.Tensor:
        buf = torch.empty((self.nchunks, self.chunk), dtype=dtype, device=device)
        if fill is not None:
            buf.fill_(fill)
        return buf

    def row_slice(self, i: int) -> slice:
        return slice(self.chunk_start[i], self.chunk_start[i] + math.ceil(self.numels[i] / self.chunk))


def kept_strides(t: torch.Tensor):
    """t's strides if a view with them can stand in for t in a flat segment and every kernel still sees what it
    expects: t dense and non-overlapping (a permuted memory order, e.g. channels_last) with dim 0 outermost, so a
    segment's rows are t's dim-0 slices (the column reductions of TAM read [n0, rest] blocks). Else None: row-major
    (t contiguous, or a layout the buffer cannot take; see bucket.Bucket.copied)."""
    if t.is_contiguous() or dense_strides(t) is None:
        return None
    outermost = max(range(t.dim()), key=lambda d: (t.stride(d), -d))
    return tuple(t.stride()) if outermost == 0 else None


def dense_strides(t: torch.Tensor):
    """t's strides if its elements fill a segment of memory exactly once (in any order of the dims), else None."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    expected = 1
    for d in reversed(order):
        if t.shape[d] > 1 and t.stride(d) != expected:
            return None
        expected *= t.shape[d]
    return tuple(t.stride())


def build_layout(tensors, device, keep_strides: bool = True, chunk: int | None = None) -> Layout:
    """`keep_strides`: views take each tensor's own strides where `kept_strides` allows (an 8-bit bucket's codes
    follow the reference's row-major blocks, so it does not). `chunk`: the row width (default: `row_width`)."""
    shapes = [tuple(t.shape) for t in tensors]
    numels = [t.numel() for t in tensors]
    chunk = chunk or row_width(numels)
    chunk_start, chunk_tensor, chunk_valid = [], [], []
    is_matrix = []
    row = nrows = 0
    row_start = []
    for i, (shape, n) in enumerate(zip(shapes, numels, strict=True)):
        k = max(1, math.ceil(n / chunk))
        chunk_start.append(row)
        matrix = len(shape) == 2
        is_matrix.append(matrix)
        row_start.append(nrows if matrix else None)
        for j in range(k):
            chunk_tensor.append(i)
            chunk_valid.append(max(0, min(chunk, n - j * chunk)))
        nrows += shape[0] if matrix else 0
        row += k

    def col(values):
        return torch.tensor(values, dtype=torch.int64, device=device).view(-1, 1)

    return Layout(
        shapes=shapes,
        numels=numels,
        chunk_start=chunk_start,
        nchunks=row,
        chunk=chunk,
        chunk_tensor=torch.tensor(chunk_tensor, dtype=torch.int64, device=device),
        chunk_valid=col(chunk_valid),
        numel_t=torch.tensor(numels, dtype=torch.float64, device=device),
        nrows=nrows,
        row_start=row_start,
        is_matrix=is_matrix,
        shape_classes=shape_classes(shapes),
        strides=[kept_strides(t) if keep_strides else None for t in tensors],
    )


def shape_classes(shapes) -> list:
    """Runs of consecutive equal shapes: [(first index, count, shape), ...]."""
    runs = []
    for i, shape in enumerate(shapes):
        if runs and runs[-1][2] == shape:
            runs[-1][1] += 1
        else:
            runs.append([i, 1, shape])
    return [tuple(r) for r in runs]
