"""AdamS-style dual momentum of Automagic_CameAMP_Improved (spec T15a; seed 003).

Sources: AdamS (Zhang et al., "AdamS: Momentum Itself Can Be A Normalizer for LLM Pretraining and
Post-training", arXiv:2505.16363) normalises by √(β2·m² + (1−β2)·g²) recomputed each step, with no
second-moment state; the long-term/mixed structure M = β1·L + α·u comes from Simplified-AdEMAMix
(Morwani et al., arXiv:2502.02431) [I-45].

Family variant: the denominator is an EMA V (a state), and L accumulates without (1 − β_L):
  L ← β_L·L + u;   M = β1·L + α·u;   V ← β2·V + (1−β2)(M² + (α·u)²);   u' = M / (√V + ε1)
with α = (1 − β1)/(1 − β_L) by default (20 for the defaults). The class then overwrites m with M.
At t = 1, u' ≈ 7.2·sign(u).
"""

from __future__ import annotations


def default_alpha(beta1: float, long_term_beta: float) -> float:
    """α = (1 − β1) / (1 − β_L)."""
    return (1 - beta1) / (1 - long_term_beta)


def dual_momentum(u, long_term, mixed_sq, beta1: float, beta2: float, long_term_beta: float, alpha: float, eps1: float):
    """Returns (u', M, L_new, V_new)."""
    # L ← β_L·L + u
    long_term = long_term.mul(long_term_beta).add(u)
    # M = β1·L + α·u   (upstream's buffer path: (L·β1) then add α·u)
    mixed = long_term.mul(beta1).add(u, alpha=alpha)
    # V ← β2·V + (1−β2)·(M² + (α·u)²)
    mixed_sq = mixed_sq.mul(beta2).add(mixed.pow(2).add(u.mul(alpha).pow(2)), alpha=1.0 - beta2)
    # u' = M / (√V + ε1)
    return mixed.div(mixed_sq.sqrt().add(eps1)), mixed, long_term, mixed_sq
