"""Laplacian edge suppression (spec T20). No paper: a heuristic of the Improved classes [I-35].

E_τ(x) = 1[|L(x)| > τ] ⊙ |L(x)|, with L the discrete 5-point Laplacian over the (last) two dims.
Two variants of L:
  * "full" (S2o, S3): 2-D, and ≥ 3-D over the last two dims, when both dims are > 2;
  * "optimized" (S2 ≥ c71aef6, the Improved class): 2-D only, both dims > 2; other shapes give 0.
Both leave the border rows/columns with only the in-range second difference and the corners 0.
τ is absolute on raw gradient or update values, so with τ = 0.6 E is almost always 0 [I-35].
"""

from __future__ import annotations

import torch

DEFAULT_THRESHOLD = 0.6  # the update-suppression site (U2) always uses this, not the group's τ


def laplacian(x: torch.Tensor, variant: str = "optimized") -> torch.Tensor:
    """L(x) over the last two dims (see the module doc for which shapes get one)."""
    lap = torch.zeros_like(x)
    if x.dim() < 2 or (variant == "optimized" and x.dim() != 2):
        return lap
    h, w = x.shape[-2:]
    if h > 2 and w > 2:
        # L[i, :] = x[i+1, :] − 2x[i, :] + x[i−1, :]   (interior rows)
        lap[..., 1:-1, :] += x[..., 2:, :] - 2 * x[..., 1:-1, :] + x[..., :-2, :]
        # L[:, j] += x[:, j+1] − 2x[:, j] + x[:, j−1]  (interior columns)
        lap[..., :, 1:-1] += x[..., :, 2:] - 2 * x[..., :, 1:-1] + x[..., :, :-2]
    return lap


def edge_penalty(x: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, variant: str = "optimized") -> torch.Tensor:
    """E_τ(x) = 1[|L| > τ] ⊙ |L|. As upstream, a < 2-D input gives zeros of its dtype, and otherwise the fp32
    mask makes a bf16 input's result fp32."""
    if x.dim() < 2:
        return torch.zeros_like(x)
    strength = laplacian(x, variant).abs()
    return (strength > threshold).float() * strength


def suppress_update(update: torch.Tensor, edge_history: torch.Tensor, penalty: float, variant: str = "optimized"):
    """U2: eh ← 0.9·eh + 0.1·E_0.6(U);  U ← U ⊙ clamp(1 − penalty·eh, 0.1, 1). Returns (U, eh)."""
    edge = edge_penalty(update, DEFAULT_THRESHOLD, variant)
    edge_history = edge_history.mul(0.9).add(edge, alpha=0.1).to(edge_history.dtype)  # upstream: in place
    factor = (1.0 - penalty * edge_history).clamp(0.1, 1.0)
    return update * factor, edge_history
