"""AdamS-style dual momentum of Automagic_CameAMP_Improved (spec T15a; seed 003).

Sources: AdamS (Zhang et al., "AdamS: Momentum Itself Can Be A Normalizer for LLM Pretraining and
Post-training", arXiv:2505.16363) normalises by √(β2·m² + (1−β2)·g²) recomputed each step, with no
second-moment state; the long-term/mixed structure M = β1·L + α·u comes from Simplified-AdEMAMix
(Morwani et al., arXiv:2502.02431) [I-45].

Family variant: the denominator is an EMA V (a state), and L accumulates without (1 − β_L):
  L ← β_L·L + u;   M = β1·L + α·u;   V ← β2·V + (1−β2)(M² + (α·u)²);   u' = M / (√V + ε1)
with α = (1 − β1)/(1 − β_L) by default (20 for the defaults). The class then overwrites m with M.
At t = 1, u' ≈ 7.2·sign(u).
"""

from __future__ import annotations

import torch

from .paper_optimizer import PaperOptimizer


def default_alpha(beta1: float, long_term_beta: float) -> float:
    """α = (1 − β1) / (1 − β_L)."""
    return (1 - beta1) / (1 - long_term_beta)


def dual_momentum(u, long_term, mixed_sq, beta1: float, beta2: float, long_term_beta: float, alpha: float, eps1: float):
    """Returns (u', M, L_new, V_new)."""
    # L ← β_L·L + u
    long_term = long_term.mul(long_term_beta).add(u)
    # M = β1·L + α·u   (upstream's buffer path: (L·β1) then add α·u)
    mixed = long_term.mul(beta1).add(u, alpha=alpha)
    # V ← β2·V + (1−β2)·(M² + (α·u)²)
    mixed_sq = mixed_sq.mul(beta2).add(mixed.pow(2).add(u.mul(alpha).pow(2)), alpha=1.0 - beta2)
    # u' = M / (√V + ε1)
    return mixed.div(mixed_sq.sqrt().add(eps1)), mixed, long_term, mixed_sq


class AdamS(PaperOptimizer):
    """The paper's AdamS (Zhang, Wang & Chen, EMNLP 2025, arXiv:2505.16363): momentum is its own normaliser,
    so no second moment is stored (SGD-with-momentum memory):
        denominator √(β2·m_{t−1}² + (1−β2)·g_t²) + ε;  m_t = β1·m + (1−β1)·g_t;
        θ ← θ·(1 − η·λ);  θ ← θ − η·m_t / denominator     (no bias correction)
    No official code or pip oracle was found (pytorch-optimizer's `AdamS` is a different algorithm, Adam
    with stable weight decay). The family's T15a is not this algorithm [I-45]."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        self._count_step(state, p, "exp_avg")
        m = state["exp_avg"]
        # denominator from the previous momentum and the current gradient
        denom = torch.sqrt(beta2 * m * m + (1 - beta2) * grad * grad).add_(group["eps"])
        m.lerp_(grad, 1 - beta1)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.sub_(m / denom, alpha=group["lr"])
