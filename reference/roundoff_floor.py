"""The corrected mode's round-off floor: a gradient element that is only round-off takes no step (issue 29).

Every optimizer of the family normalises its update element by element (CAME's v, the AdaBelief residual r,
Adam's v in HinaAdamW), and a normalised step does not depend on the gradient's magnitude. So an element whose
true gradient is exactly 0 but whose computed one is round-off takes a full-size step in the direction of that
noise. It happens in every transformer: attention logits q·(k + b_k) are shifted by q·b_k alike for every key,
softmax ignores the shift, and ∂L/∂b_k is exactly 0; autograd returns ~1e-11 (tiny GPT-2: 1e-8 of the group's
mean |g|), which upstream turns into steps of 1e-3 relative, different on every machine and in every
implementation, since round-off is.

No ε can tell round-off from a small gradient by magnitude alone: round-off scales with the magnitudes of the
terms that cancelled. What is known is the scale of the group's gradient, its mean |g| = S/n (S is AGR's Σ|g|).
An element below ROUNDOFF_FLOOR = 2⁻²⁰ (16 units of fp32 round-off) of that mean cannot be told from the
round-off of a sum of such terms, so the corrected mode reads it as 0: its moments decay, it takes no step of
its own (a projection such as OrthoGrad's can still move it, as it moves any element). Elements above the floor
are untouched. Group statistics (S, μ, σ) are taken of the gradient as it was computed. A group whose S
overflows has no floor.
"""

from __future__ import annotations

import torch

ROUNDOFF_FLOOR = 2.0**-20  # of the group's mean |g|; 9.5e-7, where the tiny GPT-2's zero gradients sit at 1e-8


def group_floor(group_sum: torch.Tensor, count: int) -> torch.Tensor:
    """The floor of a group: ROUNDOFF_FLOOR · S/n, S = Σ|g| and n = the number of its gradient elements; 0 where S
    overflowed (finite gradients whose sum is not: no scale to compare round-off with)."""
    return floor_from_sum(group_sum, ROUNDOFF_FLOOR / max(count, 1))


def floor_from_sum(group_sum: torch.Tensor, per_sum) -> torch.Tensor:
    """S · per_sum (per_sum = ROUNDOFF_FLOOR/n, a number or a 0-d tensor), or 0 where S is not finite."""
    return torch.where(torch.isfinite(group_sum), group_sum * per_sum, 0.0)


def floor_roundoff(grad: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """g where |g| > floor, else 0 (a new tensor; the gradient itself is left as it is). |g| is compared with the
    floor exactly, in the wider of the two dtypes: a bf16 gradient against the fp32 floor, not the floor rounded
    to bf16 (which ATen's promotion of a 0-d tensor would do eagerly, and inductor does not)."""
    magnitude = grad.abs().to(torch.promote_types(grad.dtype, floor.dtype))
    return torch.where(magnitude > floor, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
