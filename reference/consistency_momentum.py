"""Consistency momentum with β1 decay (spec T5).

Paper: Xu et al., "Towards Faster Training of Diffusion Models: An Inspiration of A Consistency
Phenomenon", arXiv:2404.07946 (2024): decaying the momentum coefficient speeds up diffusion training
(the paper's momentum-decay schedule; its exact formula could not be checked, see papers/ index).

Family variant: β1_t = max(β1·δ^t, 0.4); m ← β1_t·m + (1−β1_t)·x, and a second average
m̄ = β1·m + (1−β1)·x with the *undecayed* β1 and the post-update m, used only by the residual (T3).
"""

from __future__ import annotations

import torch

BETA1_FLOOR = 0.4


def decayed_beta1(beta1: float, beta1_decay: float, step: int) -> float:
    """β1_t = max(β1·δ^t, 0.4)."""
    return max(beta1 * beta1_decay**step, BETA1_FLOOR)


def consistency_momentum(m: torch.Tensor, x: torch.Tensor, beta1: float, beta1_t: float):
    """Returns (m_new, m̄)."""
    # m ← β1_t·m + (1−β1_t)·x
    m = m.mul(beta1_t).add(x, alpha=1 - beta1_t)
    # m̄ = β1·m + (1−β1)·x
    m_bar = m * beta1 + x * (1 - beta1)
    return m, m_bar
