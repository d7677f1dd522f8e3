"""Automagic per-element learning-rate mask with gradient polarity (spec T8a).

Source (no paper): Ostris, ai-toolkit `toolkit/optimizers/automagic.py`, class `Automagic`, step()
(commit 2b4c5254). Each element keeps its own learning rate, bumped up by `lr_bump` while the gradient
sign repeats and down when it flips, clamped to [min_lr, max_lr].

Family variant: the polarity is (g̃ > 0) of the AGR gradient; the mask is seeded from the constructor
lr and jumps by (η − lr_max) whenever the group lr η exceeds the running lr_max (initialised to 1e-6),
which roughly doubles the LR at the first update [I-26]; after warm-up (t ≥ W) the mask is frozen and
only rescaled by max(η/lr_max, 0.1).

Improved_8Bit keeps the name for a different schedule (T8e, `warmup_schedule` and `random_walk`): a
linear warm-up scaled per row by the inverse relative gradient norm, then a clamped random walk.
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


RANDOM_WALK_STD = 0.01  # T8e: relative step N(0, 1)·0.01, clamped to ±0.1
RANDOM_WALK_MAX_STEP = 0.1
RANDOM_WALK_RANGE = (0.1, 10.0)  # the walk stays in [0.1·η, 10·η]
ROW_FACTOR_RANGE = (0.1, 10.0)


def warmup_schedule(lr: float, t: int, warmup_steps: int, grad: torch.Tensor) -> torch.Tensor:
    """T8e while t < W: E = η·t/W · clamp(1/(r + 1e-8), 0.1, 10), r = n/(mean(n) + 1e-8), where n = ‖g'‖₂ along
    the last dim (keepdim) for ≥ 2-D g', else |g'|. E has n's shape ([rows, 1] for a matrix)."""
    # base = η · t/W
    base = lr * (t / warmup_steps)
    norm = torch.norm(grad, dim=-1, keepdim=True) if grad.dim() > 1 else torch.abs(grad)
    # r = n / (mean(n) + 1e-8)
    relative = norm / (torch.mean(norm) + 1e-8)
    return base * torch.clamp(1.0 / (relative + 1e-8), *ROW_FACTOR_RANGE)


def random_walk(mask: torch.Tensor, lr: float, noise: torch.Tensor) -> torch.Tensor:
    """T8e once t ≥ W: E ← clamp(E·(1 + clamp(0.01·z, −0.1, 0.1)), 0.1η, 10η), z ~ N(0, 1) of E's shape
    (drawn by the caller from its own generator [I-31])."""
    step = torch.clamp(noise * RANDOM_WALK_STD, -RANDOM_WALK_MAX_STEP, RANDOM_WALK_MAX_STEP)
    return torch.clamp(mask * (1 + step), lr * RANDOM_WALK_RANGE[0], lr * RANDOM_WALK_RANGE[1])
