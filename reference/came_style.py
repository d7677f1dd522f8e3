"""'CAME-style' second-moment scaling with RMS update clipping (spec T2).

Despite the upstream name this is *not* CAME (Luo et al., ACL 2023, arXiv:2307.02047, Algorithm 2:
factored second moments plus a confidence factor). It is an unfactored Adafactor-style normalisation
with Adafactor's update clipping: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost", ICML 2018, arXiv:1804.04235, Sec. 6 (update clipping), Alg. 4/5. The upstream docs link
arXiv:2411.02853, which is ADOPT [I-45].

``came=False`` replaces the scaling with ADOPT's clip schedule, clamp(g, ±t^{1/4})
(Taniguchi et al., NeurIPS 2024, arXiv:2411.02853, clipped variant of arXiv v2).
"""

from __future__ import annotations

import torch

V3_BETA2 = 0.999  # hard-coded by the Improved classes


def rms(x: torch.Tensor) -> torch.Tensor:
    """RMS(x) = ‖x‖₂ / (√n + 1e-10)   (spec §0)."""
    return x.norm(2) / (x.numel() ** 0.5 + 1e-10)


def clip_by_rms(u: torch.Tensor, clip_threshold: float) -> torch.Tensor:
    """u ← u / max(RMS(u)/c, 1)   (Adafactor Sec. 6, update clipping; spec T2 V1/V2)."""
    return u / (rms(u) / clip_threshold).clamp(min=1.0)


def clip_by_rms_improved(u: torch.Tensor, clip_threshold: float) -> torch.Tensor:
    """Improved (S2) form: u ← u·c / max(RMS(u), 1). Equal to `clip_by_rms` only when c = 1 [I-20]."""
    return u.mul(clip_threshold / rms(u).clamp(min=1.0))


def scale_v3(grad, exp_avg_sq, eps1: float, clip_threshold: float, improved_clip: bool = True):
    """V3 (Improved classes): β2 = 0.999 hard-coded, v updated first. Returns (u, v_new).

    ``improved_clip`` selects S2's clip form [I-20]; False is the usual u/max(RMS/c, 1) (S2o, fixed).
    """
    # v_t = 0.999·v_{t−1} + 0.001·(g̃² + ε1)
    v = exp_avg_sq.mul(V3_BETA2).add(grad.pow(2).add(eps1), alpha=1 - V3_BETA2)
    # u = g̃ ⊙ rsqrt(v_t), clipped by RMS
    u = grad * v.rsqrt()
    return (clip_by_rms_improved(u, clip_threshold) if improved_clip else clip_by_rms(u, clip_threshold)), v


def seed_second_moment(grad: torch.Tensor, eps1: float) -> torch.Tensor:
    """V1 at t = 1: v = g̃² + ε1; the caller then skips the rest of the step (spec T2 V1.2)."""
    return grad.pow(2) + eps1


def scale_v1(grad, exp_avg_sq, beta2: float, eps1: float, clip_threshold: float):
    """V1 for t ≥ 2 (Automagic_CameAMP on upstream main). Returns (u, v_new).

    u uses the *previous* v, then v is updated.
    """
    # q = g̃² + ε1
    q = grad.pow(2) + eps1
    # u = g̃ ⊙ rsqrt(v_{t−1}),  u ← u / max(RMS(u)/c, 1)
    u = clip_by_rms(grad * exp_avg_sq.rsqrt(), clip_threshold)
    # v_t = β2·v_{t−1} + (1−β2)·q
    v = exp_avg_sq.mul(beta2).add(q, alpha=1 - beta2)
    return u, v


def scale_v2(grad, exp_avg_sq, beta2: float, eps1: float, clip_threshold: float):
    """V2 (Automagic_CameAMP8bit, COptim, COptim8bit): v is updated first, no first-step skip.

    Returns (u, v_new); u has the gradient's dtype, as upstream's in-place `grad.clone().mul_(...)`.
    """
    # v_t = β2·v_{t−1} + (1−β2)·(g̃² + ε1)
    v = exp_avg_sq.mul(beta2).add(grad.pow(2) + eps1, alpha=1 - beta2)
    # u = g̃ ⊙ rsqrt(v_t),  u ← u / max(RMS(u)/c, 1)
    u = clip_by_rms((grad * v.rsqrt()).to(grad.dtype), clip_threshold)
    return u, v


def adopt_clip(grad: torch.Tensor, step: int) -> torch.Tensor:
    """came=False path: u = clamp(g̃, −t^{1/4}, t^{1/4})   (ADOPT clip schedule; spec T2)."""
    bound = step**0.25
    return grad.clamp(-bound, bound)
