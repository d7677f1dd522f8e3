"""Grams — gradient sign with momentum magnitude, blend form (spec T6).

Paper: Cao, Li & Song, "Grams: Gradient Descent with Adaptive Momentum Scaling", arXiv:2412.17107
(ICLR 2025 SCOPE workshop): update = sign(g_t) ⊙ |u_t|, where u_t is the Adam direction.

Family variant: the Grams direction is blended with the plain direction by α_t = δ^t
(δ = beta1_decay), so it fades out over training; the sign comes from the AGR gradient g̃.
"""

from __future__ import annotations

import math

import torch

from .paper_optimizer import PaperOptimizer


def grams_blend(update: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """U ← α·(|U| ⊙ sign(g̃)) + (1−α)·U."""
    # Grams direction: |U| ⊙ sign(g̃)
    grams = update.abs() * grad.sign()
    return alpha * grams + (1 - alpha) * update


def grams_alpha(beta1_decay: float, step: int) -> float:
    """α_t = δ^t."""
    return 1.0 * beta1_decay**step


class Grams(PaperOptimizer):
    """The paper's Grams (Algorithm 1; official code Gunale0926/Grams): Adam's moments with bias correction,
    the update takes its magnitude from the Adam direction and its sign from the gradient:
        m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  u = sign(g) ⊙ |m̂| / (√v̂ + ε)
        θ ← θ·(1 − η·λ);  θ ← θ − η·u
    ε is added to √v̂ (pytorch-optimizer ≥ 4.1, the oracle); the official code adds it to √v and folds
    √(1−β2^t) into the step size, which differs by an ε-sized term. The family (T6) blends this direction
    with the plain one by δ^t instead.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        t = self._count_step(state, p, "exp_avg", "exp_avg_sq")
        m = state["exp_avg"].lerp_(grad, 1 - beta1)
        v = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # u = sign(g) ⊙ |m̂/(√v̂ + ε)|
        update = (m / (1 - beta1**t) / (v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"])).abs() * grad.sign()
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.sub_(update, alpha=group["lr"])
