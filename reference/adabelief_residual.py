"""AdaBelief residual variance, the family's 'CAME confidence' (spec T3).

Paper: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
NeurIPS 2020, arXiv:2010.07468, Algorithm 2 (the s_t line: s_t = β2 s_{t−1} + (1−β2)(g_t − m_t)² + ε).

Family variant: the 'gradient' is the scaled gradient u, the belief is m̄ (TAM or consistency output),
there is no bias correction [I-21], and ε2 is added *after* the rsqrt (U = m ⊙ (rsqrt(r) + ε2)).
The corrected mode bias-corrects r by (1 − β3^t).
"""

from __future__ import annotations

import torch


def update_residual(r: torch.Tensor, u: torch.Tensor, m_bar: torch.Tensor, beta3: float, eps2: float):
    """r ← β3·r + (1−β3)·((u − m̄)² + ε2)."""
    # res = (u − m̄)² + ε2
    res = (u - m_bar).pow(2) + eps2
    return r.mul(beta3).add(res, alpha=1 - beta3)


def residual_direction(m: torch.Tensor, r: torch.Tensor, eps2: float, bias_correction: float = 1.0):
    """U = m ⊙ (rsqrt(r / bc) + ε2); bc = 1 upstream, 1 − β3^t when corrected."""
    return m * ((r / bias_correction).rsqrt() + eps2)
