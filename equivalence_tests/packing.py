"""Move lists of tensors into and out of the optimized path's chunked layout."""

from __future__ import annotations

import torch

from optimized.kernels import index_tensors
from optimized.layout import build_layout


class Packed:
    """A list of same-dtype tensors laid out as the fused kernels see them."""

    def __init__(self, like):
        self.layout = build_layout(like, "cpu")
        self.idx = index_tensors(self.layout)

    def pack(self, tensors, dtype=torch.float32, padding=0):
        """Padding holds `padding`; the optimizer keeps positive states (v, r) positive there."""
        flat = self.layout.empty(dtype, "cpu", fill=padding)
        for view, t in zip(self.layout.views(flat), tensors, strict=True):
            view.copy_(t)
        return flat

    def unpack(self, flat):
        return [v.clone() for v in self.layout.views(flat)]

    def per_tensor(self, values):
        """A Python list of per-tensor scalars as a [T] float64 tensor."""
        return torch.tensor(values, dtype=torch.float64)

    def rows(self, values):
        """Per-tensor scalars broadcast to the rows: [N, 1] float32."""
        return self.per_tensor(values)[self.layout.chunk_tensor].float().view(-1, 1)
