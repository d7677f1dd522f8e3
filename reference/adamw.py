"""AdamW — Adam with decoupled weight decay.

Paper: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101,
Algorithm 2 (Adam with L2 regularization and Adam with decoupled weight decay, AdamW): the decay acts on
θ directly instead of entering the gradient, so it is not rescaled by the adaptive denominator.

`cautious=True` is C-AdamW (Liang et al., arXiv:2411.16085, Algorithm 2): the Adam direction u is masked
where it disagrees in sign with g, normalised as the official code does (reference.cautious.cautious_mask).

Convention (torch.optim.AdamW, the oracle): the paper's schedule multiplier η_t and step size α are one
learning rate η, and the decay is η·λ·θ_{t−1} (the paper's η_t·λ·θ_{t−1} with α folded into η).
"""

from __future__ import annotations

import math

from .cautious import cautious_mask
from .paper_optimizer import PaperOptimizer


class AdamW(PaperOptimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, cautious=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      cautious=bool(cautious)))  # fmt: skip

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        t = self._count_step(state, p, "exp_avg", "exp_avg_sq")
        # θ ← θ − η·λ·θ   (decoupled: before, and independent of, the adaptive step)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        # m_t = β1·m + (1−β1)·g;  v_t = β2·v + (1−β2)·g²
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # u = m̂/(√v̂ + ε),  m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        if not group["cautious"]:
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))  # θ ← θ − η·u
            return
        u = state["exp_avg"] / (1 - beta1**t) / denom
        # C-AdamW: θ ← θ − η·u ⊙ φ / max(mean φ, 1e-3),  φ = 1[u ⊙ g > 0]
        p.sub_(cautious_mask(u, grad), alpha=group["lr"])
