"""Automagic per-element learning-rate mask with gradient polarity (spec T8a).

Source (no paper): Ostris, ai-toolkit `toolkit/optimizers/automagic.py`, class `Automagic`, step()
(commit 2b4c5254). Each element keeps its own learning rate, bumped up by `lr_bump` while the gradient
sign repeats and down when it flips, clamped to [min_lr, max_lr].

Family variant: the polarity is (g̃ > 0) of the AGR gradient; the mask is seeded from the constructor
lr and jumps by (η − lr_max) whenever the group lr η exceeds the running lr_max (initialised to 1e-6),
which roughly doubles the LR at the first update [I-26]; after warm-up (t ≥ W) the mask is frozen and
only rescaled by max(η/lr_max, 0.1).
"""

from __future__ import annotations

import torch

LR_MAX_INIT = 1e-6  # hard-coded upstream initial lr_max
POST_WARMUP_MIN_SCALE = 0.1


def polarity_agreement(grad: torch.Tensor, last_polarity: torch.Tensor | None):
    """π = (g̃ > 0); σ = +1 where π == P, −1 elsewhere. Returns (σ, π).

    `last_polarity=None` (the state was deleted at W and a resume with a larger W needs it again) counts as
    all False, the initial polarity [I-22].
    """
    polarity = grad > 0
    if last_polarity is None:
        last_polarity = torch.zeros_like(polarity)
    agree = torch.where(last_polarity == polarity, 1.0, -1.0)
    return agree, polarity


def warmup_lr_mask(mask, agree, lr: float, lr_max: float, lr_bump: float, min_lr: float, max_lr: float):
    """One warm-up update (t < W). Returns (M', lr_max')."""
    # M' = M + b where σ > 0, M − b where σ < 0
    new = torch.where(agree > 0, mask + lr_bump, mask - lr_bump)
    # if η > lr_max: M' ← M' + (η − lr_max), lr_max ← η
    if lr > lr_max:
        new = new + (lr - lr_max)
        lr_max = lr
    # M' ← clamp(M', min_lr, max_lr)
    return torch.clamp(new, min=min_lr, max=max_lr), lr_max


def post_warmup_lr_mask(mask, lr: float, lr_max: float):
    """After warm-up (t ≥ W): E = M·max(η/lr_max, 0.1) if η < lr_max, else M. Returns (E, lr_max')."""
    if lr > lr_max:
        lr_max = lr
    if lr < lr_max:
        return mask * max(lr / lr_max, POST_WARMUP_MIN_SCALE), lr_max
    return mask, lr_max
