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

import torch

from .cautious import cautious_mask_po
from .paper_optimizer import PaperOptimizer


def adam_moments(m, v, grad, beta1: float, beta2: float, eps: float, step: int, stale: bool, floor: bool = False):
    """Returns (m_new, v_new, denom); v̄ (stale) is v as given, which is not modified.

    A stale v̄ is 0 wherever the previous gradients were 0 — every LoRA A at t = 2, whose first gradient
    is exactly 0 while B = 0 — and the step there is m/ε ≈ 10⁷·g (found here; upstream's behaviour).
    `floor=True` (HinaAdamW's corrected mode) uses √max(v̄, v), so the step is never larger than Adam's."""
    v_prev = v
    # v ← β2·v + (1−β2)·g̃²
    v = v.mul(beta2).addcmul(grad, grad, value=1 - beta2)
    # m ← β1·m + (1−β1)·g̃
    m = m.mul(beta1).add(grad, alpha=1 - beta1)
    # denom = √v̄ + ε (t > 1, stale; √max(v̄, v) + ε with the floor) or √v + ε
    if stale and step > 1:
        second = torch.maximum(v_prev, v) if floor else v_prev
    else:
        second = v
    denom = second.sqrt().add(eps)
    return m, v, denom


def step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    """η·√(1−β2^t)/(1−β1^t)."""
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)


class ADOPT(PaperOptimizer):
    """The paper's ADOPT with clipping (Taniguchi et al., NeurIPS 2024, arXiv:2411.02853 v2+, Algorithm 2):
        first call: v = g²  (no step);
        later calls: θ ← θ·(1 − η·λ);  ĝ = clamp(g / max(√v, ε), ±c_t);  m ← β1·m + (1−β1)·ĝ;  θ ← θ − η·m;
                     v ← β2·v + (1−β2)·g²   (after the step: the normaliser is v_{t−1})
    with c_t = t^{1/4}, t counting calls including the initialising one, and the decoupled weight decay
    applied on every call, the first included, as pytorch-optimizer's ADOPT (the oracle) does.
    `cautious=True` steps with the Cautious mask on m against ĝ in pytorch-optimizer's normalisation,
    φ·n/(Σφ + 1) (reference.cautious).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, cautious=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      cautious=bool(cautious)))  # fmt: skip

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        t = self._count_step(state, p, "exp_avg", "exp_avg_sq")
        p.mul_(1 - group["lr"] * group["weight_decay"])
        v = state["exp_avg_sq"]
        if t == 1:  # v_0 = g_0²
            v.addcmul_(grad, grad)
            return
        # ĝ = clamp(g / max(√v_{t−1}, ε), −c_t, c_t),  c_t = t^{1/4}
        clip = t**0.25
        normed = (grad / v.sqrt().clamp(min=group["eps"])).clamp(-clip, clip)
        # m_t = β1·m + (1−β1)·ĝ;  θ ← θ − η·m_t (masked when cautious)
        m = state["exp_avg"].lerp_(normed, 1 - beta1)
        p.sub_(cautious_mask_po(m, normed) if group["cautious"] else m, alpha=group["lr"])
        # v_t = β2·v + (1−β2)·g²
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
