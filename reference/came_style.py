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

from .paper_optimizer import PaperOptimizer

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


def factored_second_moment(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Adafactor's rank-1 reconstruction from row and column means: V̂ = R·Cᵀ / mean(R)."""
    return (row / row.mean(dim=-1, keepdim=True)).unsqueeze(-1) * col.unsqueeze(-2)


class CAME(PaperOptimizer):
    """The paper's CAME (Luo et al., ACL 2023, arXiv:2307.02047, Algorithm 2), as the official code
    (yangluo7/CAME, `came_pytorch/CAME.py`) runs it. For G (≥ 2-D: over the last two dims):
        r, c ← β2-EMAs of the row/column means of G² + ε1;  V = r·cᵀ/mean(r);  u = G/√V
        û = u / max(1, RMS(u)/d);  m ← β1·m + (1−β1)·û
        U = (û − m)² + ε2;  R, C ← β3-EMAs of its row/column means;  S = R·Cᵀ/mean(R)
        θ ← θ − η·λ·θ;  θ ← θ − η·m/√S
    A 1-D parameter keeps an unfactored v and skips the confidence step (θ ← θ − η·m), as the official
    code does. No bias correction. The family's T2 keeps only the first two lines, unfactored, and its T3
    residual is this confidence step on different inputs (see reference.adabelief_residual).
    """

    def __init__(self, params, lr=2e-4, eps=(1e-30, 1e-16), clip_threshold=1.0, betas=(0.9, 0.999, 0.9999),
                 weight_decay=0.0):  # fmt: skip
        super().__init__(params, dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, betas=tuple(betas),
                                      weight_decay=weight_decay))  # fmt: skip

    def _update(self, p, grad, state, group):
        beta1, beta2, beta3 = group["betas"]
        eps1, eps2 = group["eps"]
        factored = grad.dim() >= 2
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            if factored:
                for name in ("exp_avg_sq", "exp_avg_res"):
                    state[f"{name}_row"] = grad.new_zeros(grad.shape[:-1])
                    state[f"{name}_col"] = grad.new_zeros(grad.shape[:-2] + grad.shape[-1:])
            else:
                state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        g2 = grad * grad + eps1
        if factored:
            # r ← β2·r + (1−β2)·mean_cols(G² + ε1);  c likewise over rows;  u = G/√(r·cᵀ/mean(r))
            state["exp_avg_sq_row"].lerp_(g2.mean(dim=-1), 1 - beta2)
            state["exp_avg_sq_col"].lerp_(g2.mean(dim=-2), 1 - beta2)
            u = grad * factored_second_moment(state["exp_avg_sq_row"], state["exp_avg_sq_col"]).rsqrt()
        else:
            u = grad * state["exp_avg_sq"].lerp_(g2, 1 - beta2).rsqrt()
        # û = u / max(1, RMS(u)/d)
        u = u / (u.norm(2) / u.numel() ** 0.5 / group["clip_threshold"]).clamp(min=1.0)
        # m ← β1·m + (1−β1)·û
        m = state["exp_avg"].lerp_(u, 1 - beta1)
        if factored:
            # confidence: U = (û − m)² + ε2, factored with β3;  step m/√S
            res = (u - m) ** 2 + eps2
            state["exp_avg_res_row"].lerp_(res.mean(dim=-1), 1 - beta3)
            state["exp_avg_res_col"].lerp_(res.mean(dim=-2), 1 - beta3)
            update = m * factored_second_moment(state["exp_avg_res_row"], state["exp_avg_res_col"]).rsqrt()
        else:
            update = m
        # θ ← θ − η·λ·θ;  θ ← θ − η·update
        p.add_(p, alpha=-group["weight_decay"] * group["lr"])
        p.sub_(update, alpha=group["lr"])
