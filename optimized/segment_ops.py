"""Small custom ops that inductor must not turn into element-wise atomics.

Inductor (2.13, CPU) lowers `index_add_` to an atomic compare-and-swap per element; when many rows
add into one tensor's slot (a 16M-element tensor has 65,536 rows) the threads contend on one
address. Registered as an opaque op, the sum runs as ATen's `index_add_` instead: a plain loop on CPU,
a hardware atomic on CUDA.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("cameamp::segment_sum", mutates_args=())
def segment_sum(values: torch.Tensor, segment: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """out[k] = Σ values[i] over i with segment[i] == k; `out` has the shape and dtype of `like`."""
    return torch.zeros_like(like).index_add_(0, segment, values.to(like.dtype))


@segment_sum.register_fake
def _(values, segment, like):
    return torch.empty_like(like)


@torch.library.custom_op("cameamp::segment_amax", mutates_args=())
def segment_amax(values: torch.Tensor, segment: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """out[k] = max(0, max values[i] over i with segment[i] == k); for non-negative values (block absmax)."""
    return torch.zeros_like(like).scatter_reduce_(0, segment, values.to(like.dtype), "amax")


@segment_amax.register_fake
def _(values, segment, like):
    return torch.empty_like(like)
