"""AGR — Adaptive Gradient Regularization, group-sum form (spec T1a).

Paper: Jiang et al., "Adaptive Gradient Regularization: A Faster and Generalizable Optimization
Technique for Deep Neural Networks", arXiv:2407.16944 (2024). The paper defines, per weight tensor,
α = |g| / Σ|g| and Ψ(g) = g − α ⊙ g.

Family variant (Automagic_CameAMP): the sum Σ|g| runs over *every* gradient of the param group,
not over one tensor, so α is tiny unless one element dominates the group's L1 mass.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .adamw import AdamW


def group_abs_sum(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """S = Σ_{q∈𝒢} Σ_i |g_q,i| over the group's gradients (spec §0, 'Group pre-pass')."""
    grads = list(grads)
    # S = Σ |g|, summed in the gradients' dtype as upstream's torch.cat(...).abs().sum() does
    return torch.cat([g.reshape(-1) for g in grads]).abs().sum()


def agr(grad: torch.Tensor, group_sum: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """g̃ = g ⊙ (1 − |g| / (S + eps))   (spec T1a; paper Ψ(g) = g − α⊙g with α = |g|/S).

    ``eps=0`` is upstream (no guard, so S = 0 would give NaN [I-05]); upstream-compatible mode
    returns g unchanged when S == 0, the only value that keeps the formula defined. ``eps=1e-12`` is the
    corrected form.
    """
    if eps == 0.0 and float(group_sum) == 0.0:
        return grad.clone()
    # α = |g| / S
    alpha = grad.abs() / (group_sum + eps)
    # g̃ = g ⊙ (1 − α)
    return grad * (1 - alpha)


def agr_hina(grad: torch.Tensor) -> torch.Tensor:
    """HinaAdamW's per-tensor "AGR" (spec T1b): g̃ = g·(1 + |Σg|/‖g‖₂); 0-d or ‖g‖ = 0: unchanged.

    Not the paper's AGR: it amplifies g by a factor in [1, 1 + √n] instead of shrinking dominant
    elements [I-40].
    """
    if grad.dim() == 0:
        return grad
    norm = grad.norm()
    if float(norm) <= 0:
        return grad
    # c = |Σ_i g_i| / ‖g‖₂;  g̃ = g·(1 + c)
    return grad * (1.0 + grad.sum().abs() / norm)


def agr_per_tensor(grad: torch.Tensor) -> torch.Tensor:
    """The paper's Ψ(G) = G − α ⊙ G with α = |G| / Σ|G| over this tensor (G unchanged when Σ|G| = 0)."""
    total = grad.abs().sum()
    if float(total) == 0.0:
        return grad
    return grad - grad.abs() / total * grad


class AdamWAGR(AdamW):
    """AdamW on the AGR gradient Ψ(g) (the paper's AdamW_AGR, official code `hjiang24/AGR-method`, branch
    master): each tensor's gradient is regularised by its own L1 mass before the AdamW step. No pip
    oracle exists; the family's T1a normalises over the whole param group instead."""

    def _update(self, p, grad, state, group):
        super()._update(p, agr_per_tensor(grad), state, group)
