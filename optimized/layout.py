"""Flat, chunked storage for a list of tensors.

Tensor i occupies `nchunks_i = ceil(numel_i / CHUNK)` rows of a `[nchunks, CHUNK]` buffer, padded with
zeros. A per-tensor reduction is a row sum followed by a segment sum over rows, so its cost and its
compiled graph do not depend on how many tensors share the buffer. Row and dim-0 column reductions (ALLoRA,
TAM) work on runs of same-shape tensors, which buckets keep adjacent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHUNK = 256  # elements per row; padding per tensor is < CHUNK


@dataclass
class Layout:
    """Where each tensor of a bucket lives, plus the index tensors the kernels need (on device)."""

    shapes: list
    numels: list
    chunk_start: list  # first row of each tensor
    nchunks: int
    chunk_tensor: torch.Tensor  # [nchunks] int64: tensor index of each row
    chunk_valid: torch.Tensor  # [nchunks, 1] int64: number of real elements in the row
    numel_t: torch.Tensor  # [T] float64: element counts
    nrows: int  # rows of all 2-D tensors; id nrows is the dummy row
    row_start: list  # first row id of each 2-D tensor (None elsewhere)
    is_matrix: list
    shape_classes: list  # (first tensor, count, shape) of each run of same-shape tensors

    @property
    def ntensors(self) -> int:
        return len(self.shapes)

    def view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Tensor i as a view of a [nchunks, CHUNK] buffer."""
        start = self.chunk_start[i] * CHUNK
        return flat.view(-1)[start : start + self.numels[i]].view(self.shapes[i])

    def views(self, flat: torch.Tensor) -> list:
        return [self.view(flat, i) for i in range(self.ntensors)]

    def empty(self, dtype, device, fill=None) -> torch.Tensor:
        buf = torch.empty((self.nchunks, CHUNK), dtype=dtype, device=device)
        if fill is not None:
            buf.fill_(fill)
        return buf

    def row_slice(self, i: int) -> slice:
        return slice(self.chunk_start[i], self.chunk_start[i] + math.ceil(self.numels[i] / CHUNK))


def build_layout(tensors, device) -> Layout:
    shapes = [tuple(t.shape) for t in tensors]
    numels = [t.numel() for t in tensors]
    chunk_start, chunk_tensor, chunk_valid = [], [], []
    is_matrix = []
    row = nrows = 0
    row_start = []
    for i, (shape, n) in enumerate(zip(shapes, numels, strict=True)):
        k = max(1, math.ceil(n / CHUNK))
        chunk_start.append(row)
        matrix = len(shape) == 2
        is_matrix.append(matrix)
        row_start.append(nrows if matrix else None)
        for j in range(k):
            chunk_tensor.append(i)
            chunk_valid.append(max(0, min(CHUNK, n - j * CHUNK)))
        nrows += shape[0] if matrix else 0
        row += k

    def col(values):
        return torch.tensor(values, dtype=torch.int64, device=device).view(-1, 1)

    return Layout(
        shapes=shapes,
        numels=numels,
        chunk_start=chunk_start,
        nchunks=row,
        chunk_tensor=torch.tensor(chunk_tensor, dtype=torch.int64, device=device),
        chunk_valid=col(chunk_valid),
        numel_t=torch.tensor(numels, dtype=torch.float64, device=device),
        nrows=nrows,
        row_start=row_start,
        is_matrix=is_matrix,
        shape_classes=shape_classes(shapes),
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
