"""One bit per element for a 0/1 state in the bucket layout (issue 6: the warm-up polarity of T8a, kept
packed by the 8-bit buckets; the fp32 classes keep one byte per element, which their warm-up steps read
and write ~20 % faster).

A [N, C] 0/1 tensor (C: the layout's row width) is kept as [N, C // 8] uint8: bit k of byte j of a row is
element k·C/8 + j of that row, so in 256-element rows the 16 elements that a vectorised pass takes at once sit
in 16 adjacent bytes at one shift (with bit 8·j + k, inductor's CPU code loaded them byte by byte: 13.4 against
6.6 ms for a 16M warm-up mask update). A tensor's elements stay in its own rows, so row slices
(`Layout.row_slice`) address the packed buffer as they address the unpacked one. `pack` and `unpack` are traced
into the compiled passes; the eager helpers below serve state_dict export and import.
"""

from __future__ import annotations

import torch

from .layout import Layout

BITS = 8


def _shifts(device) -> torch.Tensor:
    # int32 lanes: AVX2 shifts 32-bit lanes by a vector of counts in one instruction, 8-bit lanes one by one
    return torch.arange(BITS, dtype=torch.int32, device=device)


def is_packed(buf: torch.Tensor, chunk: int) -> bool:
    """Whether `buf` holds a layout of row width `chunk` packed (else one byte per element)."""
    return buf.dim() == 2 and buf.shape[-1] == chunk // BITS


def empty(layout: Layout, device) -> torch.Tensor:
    """All bits 0."""
    return torch.zeros((layout.nchunks, layout.chunk // BITS), dtype=torch.uint8, device=device)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """[..., n] uint8 → [..., 8n] uint8 of 0/1."""
    bits = (packed.unsqueeze(-2).int() >> _shifts(packed.device).view(BITS, 1)) & 1  # [..., 8, n]
    return bits.flatten(-2).to(torch.uint8)


def pack(bits: torch.Tensor) -> torch.Tensor:
    """[..., 8n] 0/1 (any integer or bool dtype) → [..., n] uint8: the eight contiguous slices shifted and
    or-ed, which inductor's CPU code runs as one pointwise loop (a sum over a size-8 dimension became a
    horizontal vector reduction per byte)."""
    grouped = bits.to(torch.uint8).unflatten(-1, (BITS, -1))
    byte = grouped[..., 0, :]
    for k in range(1, BITS):
        byte = byte | (grouped[..., k, :] << k)
    return byte


def read_tensor(packed: torch.Tensor, layout: Layout, i: int) -> torch.Tensor:
    """Tensor i's bits as a bool tensor of its shape."""
    rows = unpack(packed[layout.row_slice(i)]).view(-1)
    return rows[: layout.numels[i]].view(layout.shapes[i]).bool()


def write_tensor(packed: torch.Tensor, layout: Layout, i: int, bits: torch.Tensor) -> None:
    """Store tensor i's bits (any shape with its element count); the row's padding bits are 0."""
    rows = layout.row_slice(i)
    full = torch.zeros((rows.stop - rows.start) * layout.chunk, dtype=torch.uint8, device=packed.device)
    full[: layout.numels[i]] = bits.reshape(-1).to(packed.device) != 0
    packed[rows] = pack(full.view(-1, layout.chunk))
