"""Adaptive weight decay: sigmoid of the standardised gradient magnitude (spec T10).

Paper: Nakamura & Hong, "Adaptive Weight Decay for Deep Neural Networks", IEEE Access 7 (2019),
arXiv:1907.08931 (AdaDecay): gradient magnitudes are standardised within a layer and mapped through a
sigmoid to a per-parameter decay rate. The exact equations could not be checked here (papers/ index).

Family variant: the standardisation is per *tensor* against the whole param group, ϑ = 2·sigmoid(4z) ∈ (0,2),
and the decay is scaled by the per-element effective LR E: θ ← θ ⊙ (1 − E·wd·ϑ). It is active only for
t < W/2 [I-48].
"""

from __future__ import annotations

import torch

ADA_ALPHA = 4.0  # sigmoid steepness, hard-coded upstream


def group_abs_stats(grads):
    """μ = mean(|cat g|), σ = std_pop(|cat g|) over the group's raw gradients."""
    abs_all = torch.cat([g.reshape(-1) for g in grads]).abs()
    return abs_all.mean(), abs_all.std(unbiased=False)


def decay_factor(grad: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, eps: float = 0.0):
    """ϑ = 2 / (1 + exp(−4·z)), z = (mean|g| − μ)/(σ + eps).

    ``eps=0`` is upstream; there σ = 0 would give 0/0, so upstream-compatible mode uses ϑ = 1 then [I-05].
    The corrected form uses eps = 1e-12.
    """
    if eps == 0.0 and float(sigma) == 0.0:
        return torch.ones((), dtype=grad.dtype)
    # z = (ḡ − μ) / σ
    z = (grad.abs().mean() - mu) / (sigma + eps)
    # ϑ = 2 / (1 + exp(−α z))
    return 2 / (1 + torch.exp(-ADA_ALPHA * z))


def apply_weight_decay(theta: torch.Tensor, lr_eff: torch.Tensor, weight_decay: float, factor):
    """θ ← θ ⊙ (1 − E·wd·ϑ)."""
    return theta * (1 - lr_eff * weight_decay * factor)
