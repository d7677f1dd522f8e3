"""Cautious masking (spec T12).

Paper: Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
arXiv:2411.16085 (code: kyleliang919/C-Optim), Algorithm 1: keep only the update components whose
sign agrees with the gradient, φ = 1[u ⊙ g > 0], and rescale by the kept fraction,
u ← u ⊙ φ · n/(nnz(φ) + 1) (the released code uses φ/max(mean φ, 1e-3)).

HinaAdamW variant: the mask without any rescaling; it runs after Grams, which has already set
sign(U) = sign(g̃), so with `use_grams=True` (the default) it changes nothing [I-40].
"""

from __future__ import annotations

import torch


def cautious_mask_hina(update: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """U ← U ⊙ 1[U ⊙ g̃ > 0]   (no renormalisation; the fp32 mask promotes U to fp32, as upstream)."""
    return update * (update * grad > 0).float()
