"""Background regularisation and the spatial-awareness LR of the Improved classes (spec T22, T23).

No paper; heuristics whose names promise image-space structure that weight matrices do not have [I-35].
  * T22 background: inside the cautious branch, if the unbiased variance of the whole processed
    gradient is < 1e-6 (0 for one element), the cautious mask is halved. A per-tensor test.
  * T23a (Improved): Vs ← 0.9·Vs + 0.1·var(x, dim=−1) (unbiased, broadcast over the last dim; ones when
    the last dim is 1), for x.ndim ≥ 2; the LR mask bumps by lr_bump·clamp(Vs·detail, 0.5, 1.5).
  * T23b (Improved_8Bit): Vs ← 0.99·Vs + 0.01·var(U) and E ← E ⊙ clamp(Vs/(var(U) + 1e-8), 0.5, 2).
"""

from __future__ import annotations

import torch

BACKGROUND_VARIANCE = 1e-6
BACKGROUND_FACTOR = 0.5


def background_factor(x: torch.Tensor) -> float:
    """T22: 0.5 when var(x) < 1e-6 (unbiased; 0 for a single element), else 1."""
    variance = float(torch.var(x)) if x.numel() > 1 else 0.0
    return BACKGROUND_FACTOR if variance < BACKGROUND_VARIANCE else 1.0


def spatial_bump(lr_bump: float, spatial_variance: torch.Tensor, detail_preservation: float) -> torch.Tensor:
    """T23a LR-mask bump: lr_bump·clamp(Vs·detail_preservation, 0.5, 1.5)."""
    return lr_bump * (spatial_variance * detail_preservation).clamp(0.5, 1.5)


def update_spatial_variance(spatial_variance: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T23a: Vs ← 0.9·Vs + 0.1·v, v = var(x, dim=−1, keepdim) if the last dim > 1 else 1 (x.ndim ≥ 2)."""
    if x.dim() < 2:
        return spatial_variance
    current = torch.var(x, dim=-1, keepdim=True) if x.shape[-1] > 1 else torch.ones_like(x)
    return spatial_variance.mul(0.9).add(current, alpha=0.1)


def spatial_lr_factor(spatial_variance: torch.Tensor, update: torch.Tensor):
    """T23b: Vs ← 0.99·Vs + 0.01·σ², σ² = var(U); returns (clamp(Vs/(σ² + 1e-8), 0.5, 2), Vs)."""
    variance = torch.var(update)
    spatial_variance = spatial_variance.mul(0.99).add(variance, alpha=0.01)
    return (spatial_variance / (variance + 1e-8)).clamp(0.5, 2.0), spatial_variance
