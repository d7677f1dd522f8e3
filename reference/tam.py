"""TAM — Torque-Aware Momentum (spec T4a; corrected form per [I-18]).

Paper: Malviya et al., "Torque-Aware Momentum", arXiv:2412.18790 (2024). The paper damps the gradient
by the agreement between momentum and gradient: s_t = γ s_{t−1} + (1−γ)·cos(m_{t−1}, g_t),
d_t = (1 + s_t)/2 · g_t, m_t = β m_{t−1} + (1−β) d_t.

Family variant (upstream, `tam_upstream`): the correlation is the element-wise product of dim-0
normalised tensors N₀(m) ⊙ N₀(x), not a cosine, so each element is O(1/n₀) and s stays ≈ 0; and d
carries no (1−β) factor, so m ← 0.9·m + 0.5·x in practice. The corrected form (`tam_cosine`) uses the
paper's scalar cosine per tensor and the (1−β) factor; its s is a 0-d state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .paper_optimizer import PaperOptimizer

TAM_BETA = 0.9  # β, hard-coded upstream
TAM_DECAY = 0.9  # γ ('decay_rate'), hard-coded upstream


def normalize_dim0(x: torch.Tensor) -> torch.Tensor:
    """N₀(x) = F.normalize(x, p=2, dim=0); a 0-d tensor is treated as shape [1] (upstream raises)."""
    return F.normalize(x.reshape(1) if x.dim() == 0 else x, p=2.0, dim=0).reshape(x.shape)


def tam_upstream(m: torch.Tensor, s: torch.Tensor, x: torch.Tensor, eps1: float):
    """Upstream TAM. Returns (m_new, s_new); the caller uses m̄ = m_new."""
    # corr = N₀(m_{t−1}) ⊙ N₀(x)
    corr = normalize_dim0(m) * normalize_dim0(x)
    # s ← γ·s + (1−γ)·corr
    s = s.mul(TAM_DECAY).add(corr, alpha=1.0 - TAM_DECAY)
    # d = ((1 + s)/2 + ε1) ⊙ x
    d = ((1.0 + s) / 2.0).add(eps1).mul(x)
    # m ← β·m + d
    m = m.mul(TAM_BETA).add(d)
    return m, s


def tam_cosine(m: torch.Tensor, s: torch.Tensor, x: torch.Tensor, eps1: float):
    """Corrected TAM (paper form): s is a scalar per tensor. Returns (m_new, s_new)."""
    # c = cos(vec m_{t−1}, vec x) = ⟨m,x⟩ / (max(‖m‖,1e-8)·max(‖x‖,1e-8))
    cos = F.cosine_similarity(m.reshape(1, -1), x.reshape(1, -1)).reshape(())
    # s ← γ·s + (1−γ)·c
    s = s * TAM_DECAY + cos * (1.0 - TAM_DECAY)
    # d = ((1 + s)/2 + ε1)·x
    d = ((1.0 + s) / 2.0 + eps1) * x
    # m ← β·m + (1−β)·d
    m = m * TAM_BETA + d * (1.0 - TAM_BETA)
    return m, s


def tam_damping(m: torch.Tensor, grad: torch.Tensor, alignment, tam_beta: float, bias_correction: float = 1.0):
    """HinaAdamW's "TAM damping" (spec T4e). Returns (factor (1 + Â)/2, A_new).

    a = ⟨m_t, g̃⟩/(‖m_t‖‖g̃‖) (0 if a norm is 0);  A ← τβ·A + (1−τβ)·a;  Â = A / bias_correction.
    Upstream (bias_correction = 1) starts A at 0, so the factor is ≈ 1/2 for the first ~1/(1−τβ) steps
    [I-41]; the corrected mode divides by 1 − τβ^t.
    """
    m_norm, g_norm = m.norm(), grad.norm()
    if float(m_norm) > 0 and float(g_norm) > 0:
        # (m is fp32 where it is stored 8-bit beside a bf16/fp16 gradient: the dot product is taken in m's dtype)
        a = torch.dot(m.reshape(-1), grad.reshape(-1).to(m.dtype)) / (m_norm * g_norm)
    else:
        a = 0.0
    alignment = tam_beta * alignment + (1 - tam_beta) * a
    return (1 + alignment / bias_correction) / 2, alignment


CORRELATION_SWITCH = 10000  # Improved: per-column cosine below this many elements, global cosine above [I-18]
IMPROVED_TAM_BETA = 0.9


def column_cosine(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """c_j = Σ_i m[i,j]·x[i,j] / max(‖m[:,j]‖·‖x[:,j]‖, 1e-12), broadcast over dim 0 (a 1-D tensor gets
    one global cosine)."""
    dot = torch.sum(m * x, dim=0, keepdim=True)
    denominator = torch.clamp(m.norm(p=2, dim=0, keepdim=True) * x.norm(p=2, dim=0, keepdim=True), min=1e-12)
    cos = dot / denominator
    # materialised, as upstream's buffer: bf16 arithmetic with a stride-0 operand rounds differently
    return cos if cos.shape == m.shape else torch.ones_like(m).mul(cos)


def fast_correlation(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Improved's correlation C(m, x) (spec T4b): column cosine for n < 10000, else (≥ 2-D) the global
    cosine ⟨m,x⟩/(‖m‖‖x‖) (0 when that product is < 1e-12) filled over m's shape."""
    if m.dim() == 0:
        m, x = m.reshape(1), x.reshape(1)
    if m.numel() < CORRELATION_SWITCH or m.dim() == 1:
        return column_cosine(m, x)
    denominator = m.norm() * x.norm()
    cos = 0.0 if float(denominator) < 1e-12 else float(torch.dot(m.reshape(-1), x.reshape(-1)) / denominator)
    return torch.full_like(m, cos)


def tam_improved(m, s, x, gamma: float, eps1: float, emphasis: float = 1.0):
    """Improved TAM (spec T4b). Returns (m_new, s_new).

    S2: s ← γ·s + (1−γ)·C(m, x), then s ← s·emphasis *stored* (the geometric blow-up [I-09]);
    d = ((1 + s)/2 + ε1) ⊙ x;  m ← 0.9·m + d. (S2o's form is `tam_s2o`.)
    """
    s = s.mul(gamma).add(fast_correlation(m, x).reshape(s.shape), alpha=1.0 - gamma)
    if emphasis != 1.0:
        s = s.mul(emphasis)
    d = s.add(1.0).div(2.0).add(eps1).mul(x)
    return m.mul(IMPROVED_TAM_BETA).add(d), s


def tam_improved_fixed(m, s, x, gamma: float, eps1: float, emphasis: float = 1.0):
    """Corrected Improved TAM [I-09, I-18]: s ← γ·s + (1−γ)·cos(m, x) is a per-tensor scalar in [−1, 1];
    the emphasis scales a clamped copy, s_e = clamp(s·emphasis, −1, 1); d = ((1 + s_e)/2 + ε1)·x and
    m ← β·m + (1−β)·d. Returns (m_new, s_new)."""
    cos = F.cosine_similarity(m.reshape(1, -1), x.reshape(1, -1)).reshape(())
    s = s * gamma + cos * (1.0 - gamma)
    s_used = (s * emphasis).clamp(-1.0, 1.0)
    d = ((1.0 + s_used) / 2.0 + eps1) * x
    return m * IMPROVED_TAM_BETA + d * (1.0 - IMPROVED_TAM_BETA), s


def tam_s2o(m, s, x, eps1: float, emphasis: float = 1.0):
    """Improved S2o TAM (spec T4b, last bullet): T4a's N₀(m) ⊙ N₀(x) correlation with γ = 0.9, and the
    low-rank emphasis applied to a copy of s (not stored). Returns (m_new, s_new)."""
    corr = normalize_dim0(m) * normalize_dim0(x)
    s = s.mul(TAM_DECAY).add(corr, alpha=1.0 - TAM_DECAY)
    s_used = s * emphasis if emphasis != 1.0 else s
    d = ((1.0 + s_used) / 2.0).add(eps1).mul(x)
    return m.mul(TAM_BETA).add(d), s


def tam_as_update(m, s, u, adaptation_rate: float, last_polarity):
    """Improved_8Bit's "TAM" (spec T4c, S3), whose state is the update direction itself. m is already the
    plain EMA of g'. Returns (U = s_new, last_polarity_new).

    corr = N₀(m) ⊙ N₀(u);  s ← a·s + (1−a)·corr;  π = sign(s);
    if a previous polarity exists: s ← s·clamp(mean(π ⊙ last_polarity), 0.1, 1);  last_polarity ← (π ≠ 0).
    Each element of corr has the sign of m_i·u_i, so U > 0 wherever momentum and gradient agree, whatever
    their sign: θ − E⊙U moves *down* there, which is not a descent direction (found here). The stored
    polarity is True wherever s ≠ 0, negative s included, so the κ factor measures how often s ≠ 0 has the
    sign +1 rather than agreement; it is 0.1 at t = 1 (previous polarity all False).
    """
    corr = normalize_dim0(m).mul_(normalize_dim0(u))  # in place, as upstream: corr keeps m's dtype
    s = s.mul(adaptation_rate).add(corr, alpha=1.0 - adaptation_rate)
    polarity = torch.sign(s)
    if last_polarity is not None:
        # κ = mean(π ⊙ float(last_polarity))
        kappa = torch.mean(polarity * last_polarity.float())
        s = s * torch.clamp(kappa, 0.1, 1.0)
    return s, polarity.bool()


def tam_as_update_fixed(m, s, u, adaptation_rate: float):
    """Corrected T4c [I-18]: the paper's scalar cosine, tracked at the T4c rate, damps the momentum step.
    s ← a·s + (1−a)·cos(m, u) ∈ [−1, 1] (0-d);  U = ((1 + s)/2)·m. U has m's signs (a descent direction)
    and the magnitude of the post-warm-up update m ⊙ (1 + 0.1·tanh(m ⊙ u)), so the two phases connect.
    Returns (U, s_new)."""
    cos = F.cosine_similarity(m.reshape(1, -1), u.reshape(1, -1)).reshape(())
    s = s * adaptation_rate + cos * (1.0 - adaptation_rate)
    return (1.0 + s) / 2.0 * m, s


class TAM(PaperOptimizer):
    """Torque-Aware Momentum as a standalone optimizer (Malviya et al., arXiv:2412.18790, the TAM rule):
        S_t = cos(m_{t−1}, g_t);  ŝ ← γ·ŝ + (1−γ)·S_t;  d = (1 + ŝ)/2;  m ← β·m + (ε + d)·g;
        θ ← θ·(1 − η·λ);  θ ← θ − η·m
    with m_0 = 0 and a scalar cosine per tensor (`convention="paper"`). `convention="pytorch_optimizer"`
    is the oracle's form, which the family's T4a copied: the per-element N₀(m) ⊙ N₀(g) correlation
    (ŝ a tensor) and m_0 = g_0. Note that the family's corrected TAM (`tam_cosine`) adds a (1−β) factor
    the paper's rule does not have.
    """

    CONVENTIONS = ("paper", "pytorch_optimizer")

    def __init__(self, params, lr=1e-3, momentum=0.9, decay_rate=0.9, eps=1e-8, weight_decay=0.0,
                 convention="paper"):  # fmt: skip
        if convention not in self.CONVENTIONS:
            raise ValueError(f"convention must be one of {self.CONVENTIONS}, got {convention!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, decay_rate=decay_rate, eps=eps,
                                      weight_decay=weight_decay, convention=convention))  # fmt: skip

    def _update(self, p, grad, state, group):
        paper = group["convention"] == "paper"
        if not state:
            state["s"] = grad.new_zeros(()) if paper else torch.zeros_like(grad)
            state["momentum_buffer"] = torch.zeros_like(grad) if paper else grad.clone()
        m = state["momentum_buffer"]
        if paper:  # S_t = cos(m_{t−1}, g_t), a scalar
            corr = F.cosine_similarity(m.reshape(1, -1), grad.reshape(1, -1)).reshape(())
        else:  # N₀(m_{t−1}) ⊙ N₀(g_t)
            corr = normalize_dim0(m) * normalize_dim0(grad)
        # ŝ ← γ·ŝ + (1−γ)·S_t
        state["s"] = s = state["s"].lerp(corr, 1 - group["decay_rate"])
        # m ← β·m + (ε + (1 + ŝ)/2)·g
        m.mul_(group["momentum"]).add_(((1 + s) / 2 + group["eps"]) * grad)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.sub_(m, alpha=group["lr"])
