"""AdaBelief residual variance, the family's 'CAME confidence' (spec T3).

Paper: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
NeurIPS 2020, arXiv:2010.07468, Algorithm 2 (the s_t line: s_t = β2 s_{t−1} + (1−β2)(g_t − m_t)² + ε).

Family variant: the 'gradient' is the scaled gradient u, the belief is m̄ (TAM or consistency output),
there is no bias correction [I-21], and ε2 is added *after* the rsqrt (U = m ⊙ (rsqrt(r) + ε2)).
The corrected mode bias-corrects r by (1 − β3^t).
"""

from __future__ import annotations

import math

import torch

from .paper_optimizer import PaperOptimizer


def update_residual(r: torch.Tensor, u: torch.Tensor, m_bar: torch.Tensor, beta3: float, eps2: float):
    """r ← β3·r + (1−β3)·((u − m̄)² + ε2)."""
    # res = (u − m̄)² + ε2
    res = (u - m_bar).pow(2) + eps2
    return r.mul(beta3).add(res, alpha=1 - beta3)


def residual_direction(m: torch.Tensor, r: torch.Tensor, eps2: float, bias_correction: float = 1.0):
    """U = m ⊙ (rsqrt(r / bc) + ε2); bc = 1 upstream, 1 − β3^t when corrected."""
    return m * ((r / bias_correction).rsqrt() + eps2)


class AdaBelief(PaperOptimizer):
    """The paper's AdaBelief (Algorithm 2), with decoupled weight decay (the official package's default,
    `weight_decouple=True`) and without its RAdam rectification (`rectify=False`):
        θ ← θ·(1 − η·λ);  m ← β1·m + (1−β1)·g;  s ← β2·s + (1−β2)·(g − m)² + ε
        θ ← θ − η/(1−β1^t) · m / (√s/√(1−β2^t) + ε)
    ε enters s every step (as the paper and the official code do) and again outside the root.
    Oracle: adabelief-pytorch (weight_decouple=True, rectify=False, amsgrad=False).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        t = self._count_step(state, p, "exp_avg", "exp_avg_var")
        p.mul_(1 - group["lr"] * group["weight_decay"])
        # m_t = β1·m + (1−β1)·g
        m = state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        # s_t = β2·s + (1−β2)·(g − m_t)² + ε
        residual = grad - m
        s = state["exp_avg_var"].mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(group["eps"])
        # θ ← θ − α·m̂/(√ŝ + ε)
        denom = (s.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))
