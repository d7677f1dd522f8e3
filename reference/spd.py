"""Selective Projection Decay (spec T11).

Paper: Tian, Chen, Kira et al., "Rethinking Weight Decay for Robust Fine-Tuning of Foundation
Models", NeurIPS 2024, arXiv:2411.01713, Algorithm 1 (SPD): only when c_t = −⟨g_t, θ_t − θ_0⟩ < 0,
θ_{t+1} = θ̃ − λ·r_t·(θ̃ − θ_0) with θ̃ the plain update and
r_t = hardtanh((‖θ̃ − θ_0‖ − ‖θ_t − θ_0‖)/‖θ̃ − θ_0‖, 0, 1).

HinaAdamW variant (T11d): not selective (applied every step), after the update and the decoupled weight
decay, with r = ‖θ − θ_0‖/‖θ‖ and the step scaled by the group lr: θ ← θ − η·λ·r·(θ − θ_0) [I-40].
The anchor θ_0 is the parameter at optimizer construction.
"""

from __future__ import annotations

import math

import torch

from .paper_optimizer import PaperOptimizer


def spd_hina_penalty(theta: torch.Tensor, anchor: torch.Tensor, spd_lambda: float):
    """λ·r·(θ − θ0) with r = ‖θ − θ0‖/‖θ‖ (r = 0 when ‖θ‖ = 0). The caller subtracts η times this."""
    diff = theta - anchor
    theta_norm = theta.norm()
    # r = ‖θ − θ0‖ / ‖θ‖
    ratio = diff.norm() / theta_norm if float(theta_norm) > 0 else 0
    return spd_lambda * ratio * diff


def projection_ratio(new_theta: torch.Tensor, theta: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """r = hardtanh((‖θ̃ − θ0‖ − ‖θ − θ0‖)/(‖θ̃ − θ0‖ + 1e-8), 0, 1)   (Algorithm 1's r_t, guarded)."""
    curr, prev = torch.norm(new_theta - anchor), torch.norm(theta - anchor)
    return torch.nn.functional.hardtanh((curr - prev) / (curr + 1e-8), 0.0, 1.0)


def spd_condition(grad: torch.Tensor, theta: torch.Tensor, anchor=None) -> torch.Tensor:
    """c = −⟨g, θ − θ0⟩ (anchor None: −⟨g, θ⟩, the Improved S2 condition [I-29])."""
    return -torch.sum(grad * (theta if anchor is None else theta - anchor))


def spd_step(theta: torch.Tensor, update: torch.Tensor, anchor: torch.Tensor, decay) -> torch.Tensor:
    """θ̃ = θ − U;  θ_new = θ̃ − λ·r·(θ̃ − θ0), the Improved (S2) operation order."""
    new_theta = theta - update
    ratio = projection_ratio(new_theta, theta, anchor)
    return new_theta.sub(new_theta - anchor, alpha=float(ratio * decay))


def spd_step_s2o(theta: torch.Tensor, update: torch.Tensor, anchor: torch.Tensor, decay) -> torch.Tensor:
    """θ̃ = θ − U;  θ_new = θ̃ − (λ·r)·(θ̃ − θ0), the Improved S2o operation order (T11b)."""
    new_theta = theta - update
    ratio = projection_ratio(new_theta, theta, anchor)
    return new_theta - decay * ratio * (new_theta - anchor)


class AdamSPD(PaperOptimizer):
    """The paper's Adam-SPD (Algorithm 1): an Adam step to θ̃ (bias-corrected, no other decay), then, per
    tensor, only when c_t = −⟨g_t, θ_{t−1} − θ0⟩ < 0: θ ← θ̃ − λ·r_t·(θ̃ − θ0).
    θ0 is the parameter at its first step (the pre-trained weights), or 0 with `anchor="zero"` (PEFT
    parameters, as the paper suggests for LoRA). The official code has no licence; this is written from
    the algorithm. No pip oracle exists. The family's variants (T11a–d) differ in anchor and condition."""

    ANCHORS = ("initial", "zero")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1.0, anchor="initial"):
        if anchor not in self.ANCHORS:
            raise ValueError(f"anchor must be one of {self.ANCHORS}, got {anchor!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, anchor=anchor))

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        first = not state
        t = self._count_step(state, p, "exp_avg", "exp_avg_sq")
        if first:
            state["anchor"] = p.detach().clone() if group["anchor"] == "initial" else torch.zeros_like(p)
        theta = p.detach().clone()
        # θ̃ = θ − η·m̂/(√v̂ + ε)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))
        # c_t = −⟨g_t, θ_{t−1} − θ0⟩;  if c_t < 0: θ ← θ̃ − λ·r_t·(θ̃ − θ0)
        if float(spd_condition(grad, theta, state["anchor"])) < 0:
            ratio = projection_ratio(p.detach(), theta, state["anchor"])
            p.sub_((p.detach() - state["anchor"]) * (group["weight_decay"] * ratio))
