"""Grams — gradient sign with momentum magnitude, blend form (spec T6).

Paper: Cao, Li & Song, "Grams: Gradient Descent with Adaptive Momentum Scaling", arXiv:2412.17107
(ICLR 2025 SCOPE workshop): update = sign(g_t) ⊙ |u_t|, where u_t is the Adam direction.

Family variant: the Grams direction is blended with the plain direction by α_t = δ^t
(δ = beta1_decay), so it fades out over training; the sign comes from the AGR gradient g̃.
"""

from __future__ import annotations

import torch


def grams_blend(update: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """U ← α·(|U| ⊙ sign(g̃)) + (1−α)·U."""
    # Grams direction: |U| ⊙ sign(g̃)
    grams = update.abs() * grad.sign()
    return alpha * grams + (1 - alpha) * update


def grams_alpha(beta1_decay: float, step: int) -> float:
    """α_t = δ^t."""
    return 1.0 * beta1_decay**step
