"""HinaAdamW's "ADOPT stability" moments (spec T13).

Named after ADOPT (Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal
Rate", NeurIPS 2024, arXiv:2411.02853, Algorithm 2), which normalises the gradient by the *previous*
second moment before the momentum, starts from v_0 = g_0² and clips. The HinaAdamW variant only keeps
the one-step-stale denominator: it is Adam whose denominator uses v_{t−1} [I-40].

Per step, with g̃ the (optionally AGR-transformed) gradient:
    v̄ ← v;  v ← β2·v + (1−β2)·g̃²;  m ← β1·m + (1−β1)·g̃
    denom = √v̄ + ε if t > 1 else √v + ε
and the step size is η·√(1−β2^t)/(1−β1^t). With `stale=False` it is plain Adam (denom = √v + ε).
"""

from __future__ import annotations

import math


def adam_moments(m, v, grad, beta1: float, beta2: float, eps: float, step: int, stale: bool):
    """Returns (m_new, v_new, v_prev, denom); v_prev is None when not stale."""
    v_prev = v.clone() if stale else None
    # v ← β2·v + (1−β2)·g̃²
    v = v.mul(beta2).addcmul(grad, grad, value=1 - beta2)
    # m ← β1·m + (1−β1)·g̃
    m = m.mul(beta1).add(grad, alpha=1 - beta1)
    # denom = √v̄ + ε (t > 1, stale) or √v + ε
    denom = (v_prev if stale and step > 1 else v).sqrt().add(eps)
    return m, v, v_prev, denom


def step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    """η·√(1−β2^t)/(1−β1^t)."""
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
