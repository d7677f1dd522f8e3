"""Cautious masking (spec T12).

Paper: Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
arXiv:2411.16085 (code: kyleliang919/C-Optim), Algorithm 1: keep only the update components whose
sign agrees with the gradient, φ = 1[u ⊙ g > 0], and rescale by the kept fraction,
u ← u ⊙ φ · n/(nnz(φ) + 1) (the released code uses φ/max(mean φ, 1e-3)).

Normalisations differ between implementations (spec papers.md §3): the paper's Alg. 2 divides by
mean(φ); the official code and timm by max(mean φ, 1e-3) (`cautious_mask`, the Automagic classes'
T12); pytorch-optimizer multiplies by n/(Σφ + 1) (`cautious_mask_po`, used by reference.adopt_stability's
ADOPT and tested against pytorch-optimizer).

HinaAdamW variant: the mask without any rescaling; it runs after Grams, which has already set
sign(U) = sign(g̃), so with `use_grams=True` (the default) it changes nothing [I-40].
"""

from __future__ import annotations

import torch


def cautious_mask_hina(update: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """U ← U ⊙ 1[U ⊙ g̃ > 0]   (no renormalisation; the fp32 mask promotes U to fp32, as upstream)."""
    return update * (update * grad > 0).float()


def cautious_mask(update: torch.Tensor, grad: torch.Tensor, min_mean: float = 1e-3) -> torch.Tensor:
    """Official / timm: U ⊙ φ / max(mean φ, 1e-3),  φ = 1[U ⊙ g > 0]."""
    mask = (update * grad > 0).to(update.dtype)
    return update * mask / mask.mean().clamp(min=min_mean)


def cautious_mask_po(update: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """pytorch-optimizer: U ⊙ φ · n/(Σφ + 1)."""
    mask = (update * grad > 0).to(update.dtype)
    return update * (mask * (mask.numel() / (mask.sum() + 1)))
