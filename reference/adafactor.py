"""Adafactor: factored second moments with update clipping.

Paper: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018,
arXiv:1804.04235. Sec. 3 (factored estimator), Sec. 6 (update clipping), Sec. 7 (β̂2,t = 1 − t^−0.8),
Sec. 8 (relative step size), and Algorithms 4 (matrices) and 5 (vectors) of Sec. 9, without momentum.

For an n×m gradient G (≥ 2-D: over the last two dims):
    R_t = β̂2,t·R + (1−β̂2,t)·(G² + ε1)·1_m      row statistics
    C_t = β̂2,t·C + (1−β̂2,t)·1_nᵀ·(G² + ε1)      column statistics
    V̂_t = R_t·C_t / (1_nᵀ·R_t)                   rank-1 reconstruction
and for a vector V̂_t = β̂2,t·V̂ + (1−β̂2,t)·(G² + ε1). Then
    U = G/√V̂;  Û = U / max(1, RMS(U)/d);  α_t = max(ε2, RMS(θ_{t−1})) · ρ_t,  ρ_t = min(lr, 1/√t);
    θ ← θ − α_t·Û.
Row and column means are kept instead of sums: the reconstruction is the same.

The family's "CAME-style" scaling (reference.came_style) is this update clipping on an unfactored
second moment with a fixed β2. Oracle: torch.optim.Adafactor, which clamps V̂ at ε1² instead of adding
ε1 to G²; the two agree where G² ≫ ε1 (always, for ε1 = 1e-30 and fp32 gradients that are not 0).
"""

from __future__ import annotations

import torch

from .paper_optimizer import PaperOptimizer


def rms(x: torch.Tensor) -> torch.Tensor:
    """RMS(x) = ‖x‖₂/√n."""
    return x.norm(2) / x.numel() ** 0.5


class Adafactor(PaperOptimizer):
    def __init__(self, params, lr=1e-2, eps=(1e-30, 1e-3), clip_threshold=1.0, beta2_decay=-0.8, weight_decay=0.0):
        if isinstance(beta2_decay, bool) or not isinstance(beta2_decay, (int, float)) or beta2_decay > 0:
            raise ValueError(f"beta2_decay must be a number <= 0 (1 − β̂2,t = t^beta2_decay), got {beta2_decay!r}")
        super().__init__(params, dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, beta2_decay=beta2_decay,
                                      weight_decay=weight_decay))  # fmt: skip

    def _update(self, p, grad, state, group):
        eps1, eps2 = group["eps"]
        factored = grad.dim() >= 2
        if not state:
            state["step"] = 0
            if factored:
                state["row"] = torch.zeros(grad.shape[:-1], dtype=grad.dtype, device=grad.device)
                state["col"] = torch.zeros(grad.shape[:-2] + grad.shape[-1:], dtype=grad.dtype, device=grad.device)
            else:
                state["v"] = torch.zeros_like(grad)
        state["step"] += 1
        t = state["step"]
        # 1 − β̂2,t = t^−0.8;  ρ_t = min(lr, 1/√t);  α_t = max(ε2, RMS(θ_{t−1}))·ρ_t
        rate = t ** group["beta2_decay"]
        alpha = max(eps2, float(rms(p))) * min(group["lr"], t**-0.5)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        g2 = grad * grad + eps1
        if factored:
            # R ← β̂R + (1−β̂)·mean_cols(G² + ε1);  C ← β̂C + (1−β̂)·mean_rows(G² + ε1)
            state["row"].lerp_(g2.mean(dim=-1), rate)
            state["col"].lerp_(g2.mean(dim=-2), rate)
            # V̂ = R·Cᵀ / mean(R)
            row, col = state["row"].unsqueeze(-1), state["col"].unsqueeze(-2)
            v = row * col / state["row"].mean(-1, keepdim=True).unsqueeze(-1)
        else:
            v = state["v"].lerp_(g2, rate)
        # U = G/√V̂;  Û = U / max(1, RMS(U)/d)
        update = grad * v.rsqrt()
        update = update / max(1.0, float(rms(update)) / group["clip_threshold"])
        p.sub_(update, alpha=alpha)
