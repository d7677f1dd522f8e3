"""HinaAdamW's dynamic weight-decay schedule (spec T14; seed 001). No paper: original to upstream.

LoRA factors: m_t = 1 for t ≤ T, else max(ρ_min, f^{min((t−T)/T, 2)}).
LoKr factors: m_t = 1 for t ≤ T, else max(1.5·ρ_min, (f^{0.7})^{min((t−T)/T, 1.5)}).
Others: 1. Applied as θ ← θ − η·(wd·m_t)·θ after the update. With the defaults (f = 0.7) the floor
ρ_min = 0.1 is never reached: m_t ≥ 0.49 [I-39]; the cap is kept as upstream has it.
"""

from __future__ import annotations


def weight_decay_multiplier(kind: str, step: int, transition: int, factor: float, min_ratio: float) -> float:
    if step <= transition:
        return 1.0
    progress = (step - transition) / transition
    if kind in ("lora_a", "lora_b"):
        return max(min_ratio, factor ** min(progress, 2.0))
    if kind.startswith("lokr_"):
        return max(min_ratio * 1.5, (factor**0.7) ** min(progress, 1.5))
    return 1.0
