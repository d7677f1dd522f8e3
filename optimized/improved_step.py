"""Automagic_CameAMP_Improved's step on a stack of same-shape tensors: `x[i]` is tensor i, so an
element-wise line of the reference is the same line here, a per-tensor reduction is a reduction over
every dim but the first, and the 2-D stencils (Laplacian, finite differences, row variance) and the
rank penalty's eigh/SVD are batched over the stack. Per-tensor branches of the reference (the d_coef and
SPD conditions, the background test, the global-cosine guard, OrthoGrad's guards) are `torch.where`
selects, so nothing is read back to the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import edge_suppression, low_rank_penalty, spatial_awareness
from reference.came_style import V3_BETA2
from reference.orthograd import PARALLEL_TOL
from reference.tam import CORRELATION_SWITCH, IMPROVED_TAM_BETA

AGR_EPS = 1e-10
CAUTIOUS_MIN_MEAN = 1e-3


def rows(x: torch.Tensor) -> torch.Tensor:
    """[c, ...] → [c, n]: one row per tensor."""
    return x.reshape(x.shape[0], -1)


def per(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-tensor value [c] broadcast against a stack [c, ...]."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def tensor_sum(x):
    return per(rows(x).sum(1), x)


def tensor_norm(x):
    return per(torch.linalg.vector_norm(rows(x), dim=1), x)


def tensor_rms(x):
    """RMS(x) = ‖x‖₂ / (√n + 1e-10) per tensor."""
    return tensor_norm(x) / (rows(x).shape[1] ** 0.5 + 1e-10)


def tensor_dot(a, b):
    """⟨a_i, b_i⟩ per tensor with torch.dot, one call per tensor: the reference's OrthoGrad and global
    cosine use torch.dot, and upstream's OrthoGrad of an update nearly parallel to θ (the rank penalty
    makes g̃ ≈ 20·θ) amplifies any other summation order to ~1e-6 of the parameter."""
    return per(torch.stack([torch.dot(x, y) for x, y in zip(rows(a), rows(b), strict=True)]), a)


def edge_penalty(x: torch.Tensor, ndim: int, threshold: float) -> torch.Tensor:
    """edge_suppression.edge_penalty(x[i], threshold, "optimized") for each i (the "optimized" Laplacian is
    defined for 2-D tensors only; other ≥ 2-D shapes give fp32 zeros, < 2-D ones zeros of x's dtype)."""
    if ndim < 2:
        return torch.zeros_like(x)
    # the "full" variant takes the Laplacian over the last two dims, i.e. per tensor of the stack
    strength = edge_suppression.laplacian(x, "full").abs() if ndim == 2 else torch.zeros_like(x)
    return (strength > threshold).float() * strength


def finite_difference_penalty(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """frequency_penalty.finite_difference_penalty per tensor (2-D tensors with both dims ≥ 2)."""
    penalty = torch.zeros_like(x)
    if ndim != 2 or x.shape[1] < 2 or x.shape[2] < 2:
        return penalty
    penalty[..., :, 1:] += (x[..., :, 1:] - x[..., :, :-1]).abs()
    penalty[..., 1:, :] += (x[..., 1:, :] - x[..., :-1, :]).abs()
    return penalty


def rank_penalty(theta: torch.Tensor, strength: float, form: str) -> torch.Tensor:
    """low_rank_penalty's three forms for a stack of matrices; eigh and SVD are batched, in fp32."""
    x = theta if theta.dtype in (torch.float32, torch.float64) else theta.float()
    k = low_rank_penalty.KEPT_RANK
    if form == "approximate":
        gram = x @ x.mT if x.shape[1] <= x.shape[2] else x.mT @ x
        eigenvalues = torch.linalg.eigh(gram)[0].flip(-1)  # descending
        tail = per(eigenvalues[:, k:].sum(-1), theta) * strength
        return theta * (tail if theta.dtype == x.dtype else tail.to(theta.dtype))
    if form == "exact":
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return (u @ torch.diag_embed(s * strength) @ vh).to(theta.dtype)
    # the corrected tail nuclear-norm gradient: zero when rank ≤ k or θ is not finite
    if min(theta.shape[1:]) <= k:
        return torch.zeros_like(theta)
    finite = per(torch.isfinite(rows(x)).all(1), x)
    u, _, vh = torch.linalg.svd(torch.where(finite, x, 0.0), full_matrices=False)
    return torch.where(finite, strength * u[..., :, k:] @ vh[..., k:, :], 0.0).to(theta.dtype)


def scale_v3(grad, v, eps1: float, clip_threshold: float, improved_clip: bool):
    """came_style.scale_v3 per tensor, v updated in place. Returns (u, v)."""
    v.mul_(V3_BETA2).add_(grad.pow(2).add(eps1), alpha=1 - V3_BETA2)
    u = grad * v.rsqrt()
    if improved_clip:  # u·c / max(RMS(u), 1)
        return u.mul(clip_threshold / tensor_rms(u).clamp(min=1.0)), v
    return u / (tensor_rms(u) / clip_threshold).clamp(min=1.0), v


def correlation(m: torch.Tensor, x: torch.Tensor, ndim: int) -> torch.Tensor:
    """tam.fast_correlation per tensor: the column cosine over the tensor's dim 0 below 10,000 elements (or
    1-D), else the global cosine (0 when ‖m‖‖x‖ < 1e-12), as a full tensor."""
    if ndim == 0:
        m, x = m.unsqueeze(1), x.unsqueeze(1)
    if rows(m).shape[1] < CORRELATION_SWITCH or ndim <= 1:
        dot = torch.sum(m * x, dim=1, keepdim=True)
        denominator = torch.clamp(m.norm(p=2, dim=1, keepdim=True) * x.norm(p=2, dim=1, keepdim=True), min=1e-12)
        cos = torch.ones_like(m).mul(dot / denominator)
    else:
        denominator = tensor_norm(m) * tensor_norm(x)
        cos = torch.where(denominator < 1e-12, 0.0, tensor_dot(m, x) / denominator).expand_as(m).to(m.dtype)
    return cos.squeeze(1) if ndim == 0 else cos


def tam(m, s, x, gamma: float, eps1: float, emphasis: float, ndim: int, fixed: bool):
    """tam.tam_improved (upstream: element-wise s, stored emphasis) or tam_improved_fixed (scalar cosine s)."""
    if fixed:
        cos = F.cosine_similarity(rows(m), rows(x), dim=1)
        s = s * gamma + cos * (1.0 - gamma)
        s_used = per((s * emphasis).clamp(-1.0, 1.0), m)
        d = ((1.0 + s_used) / 2.0 + eps1) * x
        return m * IMPROVED_TAM_BETA + d * (1.0 - IMPROVED_TAM_BETA), s
    s = s.mul(gamma).add(correlation(m, x, ndim), alpha=1.0 - gamma)
    if emphasis != 1.0:
        s = s.mul(emphasis)
    d = s.add(1.0).div(2.0).add(eps1).mul(x)
    return m.mul(IMPROVED_TAM_BETA).add(d), s


def orthograd(theta, x, fixed: bool):
    """orthograd.orthograd per tensor (x unchanged where ‖θ‖ ≤ 1e-30; zeros where the corrected mode finds
    x parallel to θ)."""
    w = theta.to(x.dtype)
    nu = tensor_norm(x)
    proj = tensor_dot(w, x) / tensor_dot(w, w).add(1e-30)
    # rounded as the reference's x.sub(w, alpha=π) rounds on CPU (a fused multiply-add in fp32, π·w rounded
    # first in bf16): a one-element x is parallel to θ, and its v⊥ is nothing but that rounding
    full = x.dtype in (torch.float32, torch.float64)
    perp = torch.addcmul(x, w, -proj) if full else x - proj * w
    perp_norm = tensor_norm(perp)
    out = perp * (nu / perp_norm.add(1e-30))
    if fixed:
        out = torch.where(perp_norm <= PARALLEL_TOL * nu, 0.0, out)
    return torch.where(tensor_norm(theta) <= 1e-30, x, out)


def cautious(update, x, background: bool):
    """T12 with T22: φ = 1[U ⊙ u' > 0] / max(mean φ, 1e-3), halved where var(u') < 1e-6."""
    mask = (update * x > 0).to(x.dtype)
    mask = mask / per(rows(mask).mean(1), mask).clamp(min=CAUTIOUS_MIN_MEAN)
    if background:
        n = rows(x).shape[1]
        variance = rows(x).var(1) if n > 1 else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        low = spatial_awareness.BACKGROUND_VARIANCE
        factor = torch.where(variance < low, spatial_awareness.BACKGROUND_FACTOR, 1.0).to(mask.dtype)
        mask = mask * per(factor, mask)
    return update * mask


def suppress_update(update, edge_history, penalty: float, ndim: int):
    """edge_suppression.suppress_update per tensor. Returns (U, eh)."""
    edge = edge_penalty(update, ndim, edge_suppression.DEFAULT_THRESHOLD)
    edge_history = edge_history.mul(0.9).add(edge, alpha=0.1).to(edge_history.dtype)
    return update * (1.0 - penalty * edge_history).clamp(0.1, 1.0), edge_history


def spd_step(theta, update, anchor, decay):
    """spd.spd_step per tensor: θ̃ = θ − U; θ̃ − λ·r·(θ̃ − θ0)."""
    new_theta = theta - update
    curr, prev = tensor_norm(new_theta - anchor), tensor_norm(theta - anchor)
    ratio = F.hardtanh((curr - prev) / (curr + 1e-8), 0.0, 1.0)
    return new_theta - (new_theta - anchor) * (ratio * decay)
