"""Automagic_CameAMP, composed from the technique functions of this package (spec optimizers.md O1).

Upstream: `hinablue/sd-scripts`, `library/automagic_cameamp.py` @ 863c5b5 (= main @ 1bba43e).

Per-parameter pipeline (t = this parameter's step after increment, W = warmup_steps, η = group lr):
  1. g̃ = AGR(g)                                   T1a  agr.agr
  2. t == 1 and came: seed v = g̃² + ε1, stop      T2   came_style.seed_second_moment
     else u = clip(g̃/√v) (came) or ADOPT clip     T2   came_style.scale_v1 / adopt_clip
  3. t < W/2: TAM, m̄ = m; else consistency        T4a / T5
  4. r ← β3 r + (1−β3)((u − m̄)² + ε2); U = m(r^-½ + ε2)   T3
  5. U ← Grams blend with α = δ^t                 T6
  6. t < W/2: U ← OrthoGrad(θ, U)                 T7a
  7. E = LR mask (warm-up update or post scale)   T8a
  8. E ← E ⊙ ρ (ALLoRA rows, 2-D, not full_finetune)   T9a
  9. t < W/2 and wd > 0: θ ← θ(1 − E·wd·ϑ)        T10
 10. θ ← θ − U ⊙ E

``compat="fixed"`` is the default. ``compat="upstream"`` (for parity studies) reproduces the upstream numerics.
Where upstream crashes or produces NaN, it does the defined thing instead, as upstream-issues.md prescribes: S = 0
leaves g unchanged and σ = 0 gives ϑ = 1 [I-05]; the group statistics μ, σ are computed whenever a parameter of the
group needs them [I-07]; keys deleted at t == W are recreated if a warm branch needs them [I-22]; fp16 parameters
get fp32 states [I-24]; no `torch.cuda.synchronize()` [I-04]; 0-d parameters are treated as shape [1] by TAM
(upstream raises).

``compat="fixed"`` applies the corrections of upstream-issues.md:
  * [I-05] ε = 1e-12 in the AGR sum and in σ.
  * [I-18] TAM uses the paper's scalar cosine per tensor (s is 0-d) and m ← βm + (1−β)d.
  * [I-21] the residual r is bias-corrected by (1 − β3^t).
  * [I-24] every state is float32, whatever the parameter dtype.
  * [I-25] the mask starts at the group lr; min_lr, max_lr and lr_bump are per-group settings.
  * [I-26] lr_max starts at the group lr, so the first update does not double the LR.
  * [I-28] ρ is recomputed from the current rows every step. (Restricting it to LoRA factors needs
    parameter names; that arrives with the named-parameter construction of the family issue.)
  * [I-48] ``wd_until="always"`` keeps adaptive weight decay on after W/2 (default "warmup_half").
  * OrthoGrad of an update parallel to θ (every one-element tensor) returns 0 instead of rounding
    noise rescaled to ‖U‖ (see reference.orthograd; not in upstream-issues.md).
The first-step seeding (θ does not move at t = 1) and the t < W/2 / t < W phase convention are kept:
they are well-defined and documented [I-49].
"""

from __future__ import annotations

import torch

from . import adabelief_residual, adaptive_weight_decay, agr, came_style, lr_mask, tam
from .allora import allora_row_scaling, allora_row_scaling_fixed
from .automagic_base import FIXED_EPS, AutomagicBase
from .consistency_momentum import consistency_momentum, decayed_beta1
from .grams import grams_alpha, grams_blend
from .orthograd import PARALLEL_TOL, orthograd
from .persistence import restore_state_dtypes


class Automagic_CameAMP(AutomagicBase):
    """Readable reference of Automagic_CameAMP. Keyword arguments and defaults are upstream's."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._step = 0  # upstream attribute: the last processed parameter's t (not saved)

    def _wd_active(self, group, t: int) -> bool:
        if group["weight_decay"] <= 0:
            return False
        return t < group["warmup_steps"] / 2 or (self.fixed and self.wd_until == "always")

    def _init_state(self, p, group):
        dtype = self._work_dtype(p)
        self._init_common_state(p, group, dtype)
        if not group["full_finetune"] and p.dim() == 2:
            if self.fixed:
                rho = allora_row_scaling_fixed(p, group["eta"]).to(dtype)
            else:
                rho = allora_row_scaling(p.detach().to(dtype), group["eta"])
            self._store(self.state[p], "row_scaling", rho)

    def _stats_grads(self, grads):
        """Gradients as used by the group statistics (fp32 where the states are fp32)."""
        return [g.float() if (self.fixed or g.dtype == torch.float16) else g for g in grads]

    # ------------------------------------------------------------------ step
    def _step_groups(self):
        for group in self.param_groups:
            context = self._group_context()
            with_grad = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            if not with_grad:
                continue
            grads = self._stats_grads([p.grad for p in with_grad])
            # T1a: S = Σ|g| over the group
            group_sum = agr.group_abs_sum(grads)
            self._set_floor(group_sum, with_grad)
            updating = [p for p in with_grad if p.requires_grad]
            # T10 pre-pass: μ, σ whenever a parameter of this group will use them [I-07]
            mu = sigma = None
            if any(self._wd_active(group, self.state[p].get("step", 0) + 1) for p in updating):
                mu, sigma = adaptive_weight_decay.group_abs_stats(grads)
            for p in updating:
                self._step_param(p, group, group_sum, mu, sigma, *context)

    def _group_context(self) -> tuple:
        """Extra per-group arguments of `_step_param`, evaluated even for a group without gradients
        (C-Optim: the contextual multiplier and the edge flag)."""
        return ()

    def _work_dtype(self, p):
        """The dtype of g̃ and of the step's arithmetic: the state dtype [I-24]."""
        return self._state_dtype(p.dtype)

    @property
    def _eps_guard(self) -> float:
        """[I-05] denominator guard of AGR and adaptive weight decay: none upstream."""
        return FIXED_EPS if self.fixed else 0.0

    def _begin_param(self, p, group, group_sum):
        """The family's common start: lazy init, g̃ (T1a), t += 1, and at t == W the warm-up-only
        state is dropped (T27.1). Returns (state, raw g, g̃, t)."""
        state = self.state[p]
        if len(state) == 0:
            self._init_state(p, group)
        raw_grad = self._floored(p.grad.to(group_sum.dtype) if p.grad.dtype != group_sum.dtype else p.grad)
        grad = agr.agr(raw_grad, group_sum, eps=self._eps_guard).to(self._work_dtype(p))  # T1a
        state["step"] += 1
        t = state["step"]
        self._step = t
        if t == group["warmup_steps"]:
            self._drop(state, "s")
            state.pop("last_polarity", None)
        return state, raw_grad, grad, t

    def _momentum(self, state, x, group, t):
        """T4a TAM while t < W/2 (m̄ = m), else T5 consistency momentum, with input x. Stores m (and s).
        Returns (m, m̄)."""
        beta1 = group["betas"][0]
        m = self._load(state, "exp_avg")
        if t < group["warmup_steps"] / 2:
            if self._has(state, "s"):
                s = self._load(state, "s")
            else:  # [I-22] recreated on demand after a resume with a larger W
                s = m.new_zeros(()) if self.fixed else torch.zeros_like(m)
            m, s = (tam.tam_cosine if self.fixed else tam.tam_upstream)(m, s, x, group["eps"][0])
            self._store(state, "s", s)
            m_bar = m
        else:
            m, m_bar = consistency_momentum(m, x, beta1, decayed_beta1(beta1, group["beta1_decay"], t))
        self._store(state, "exp_avg", m)
        return m, m_bar

    def _apply_update(self, p, group, update, lr_eff, raw_grad, mu, sigma, t):
        """T10 adaptive weight decay θ ← θ(1 − E·wd·ϑ) where active, then θ ← θ − U ⊙ E."""
        if self._wd_active(group, t):
            factor = adaptive_weight_decay.decay_factor(raw_grad, mu, sigma, eps=self._eps_guard)
            p.mul_(1 - lr_eff * group["weight_decay"] * factor)
        p.add_(-update.mul(lr_eff))

    def _step_param(self, p, group, group_sum, mu, sigma):
        state, raw_grad, grad, t = self._begin_param(p, group, group_sum)
        _, beta2, beta3 = group["betas"]
        eps1, eps2, _ = group["eps"]
        early = t < group["warmup_steps"] / 2

        # T2: second-moment scaling (V1) or the ADOPT clip
        if group["came"]:
            if t == 1:
                state["exp_avg_sq"] = state["exp_avg_sq"] + came_style.seed_second_moment(grad, eps1)
                return  # V1: the first step only seeds v
            u, state["exp_avg_sq"] = came_style.scale_v1(
                grad, state["exp_avg_sq"], beta2, eps1, group["clip_threshold"]
            )
        else:
            u = came_style.adopt_clip(grad, t)

        m, m_bar = self._momentum(state, u, group, t)  # T4a / T5

        # T3: AdaBelief residual
        r = adabelief_residual.update_residual(state["exp_avg_res"], u, m_bar, beta3, eps2)
        state["exp_avg_res"] = r
        bias_correction = 1 - beta3**t if self.fixed else 1.0
        update = adabelief_residual.residual_direction(m, r, eps2, bias_correction)

        # T6: Grams blend; T7a: OrthoGrad while early
        update = grams_blend(update, grad, grams_alpha(group["beta1_decay"], t))
        if early:
            update = orthograd(p, update, PARALLEL_TOL if self.fixed else 0.0)

        lr_eff = self._lr_mask(state, group, grad, t)  # T8a

        # T9a: ALLoRA rows (recomputed from the current rows when fixed [I-28])
        if "row_scaling" in state:
            if self.fixed:
                state["row_scaling"] = allora_row_scaling_fixed(p, group["eta"]).to(self._work_dtype(p))
            lr_eff = lr_eff * state["row_scaling"]

        self._apply_update(p, group, update, lr_eff, raw_grad, mu, sigma, t)  # T10, θ ← θ − U ⊙ E

    def _lr_mask(self, state, group, grad, t):
        """T8a: the warm-up update of the mask (stored) or the post-warm-up scaling (not stored). Returns E."""
        lr = group["lr"]
        mask = self._load(state, "lr_mask")
        if t >= group["warmup_steps"]:
            lr_eff, state["lr_max"] = lr_mask.post_warmup_lr_mask(mask, lr, state["lr_max"])
            return lr_eff
        agree, state["last_polarity"] = lr_mask.polarity_agreement(grad, state.get("last_polarity"))
        new, state["lr_max"] = lr_mask.warmup_lr_mask(
            mask, agree, lr, state["lr_max"], self._mask_setting(group, "lr_bump"),
            self._mask_setting(group, "min_lr"), self._mask_setting(group, "max_lr"),
        )  # fmt: skip
        self._store(state, "lr_mask", new)
        state["avg_lr"] = float(new.mean())
        return new

    # ------------------------------------------------------------------ persistence, monitoring
    def _load_state_dict(self, state_dict):
        super()._load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict)

    def _get_group_lr(self, group) -> float:
        """T27.8: mean of the params' avg_lr, or the constructor lr when none has one yet."""
        values = [self.state[p]["avg_lr"] for p in group["params"] if "avg_lr" in self.state[p]]
        return float(torch.mean(torch.tensor(values))) if values else self.defaults["lr"]
