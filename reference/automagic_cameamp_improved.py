"""Automagic_CameAMP_Improved, with AdamS-style dual momentum (spec optimizers.md O6; seed 003).

Upstream: `hinablue/sd-scripts`, `library/automagic_cameamp_improved.py` @ 803cb56 (= main).

Per-parameter pipeline (t after increment, W = warmup_steps, "early" = t < ⌊W/2⌋):
  1. α = |g|/(S + 1e-10), ×(1 + edge_penalty·E_τ(g)); g̃ = g ⊙ (1 − α)    T1a + T20 U1
  2. g̃ ← g̃ − frequency_penalty·R(g̃)  (2-D, spatial_awareness)             T21b
  3. g̃ ← g̃ + P(θ)  (2-D, lora_rank_penalty)                                T24
  4. u = V3 scaling of g̃ (β2 = 0.999, S2 clip form)                        T2 V3
  5. u' = dual momentum of u, and m := M  (enable_dual_momentum)           T15a
  6. early: TAM (S2 form) on m with x = u', β3 = 0.9999; else consistency  T4b / T5
  7. r ← β3 r + (1−β3)((u' − m)² + ε2);  U = m ⊙ rsqrt(r)                   T3
  8. E = LR mask with spatial bump and d_coef asymmetry                    T8c + T23a
  9. early: OrthoGrad, Grams sign of u', edge suppression of U;            T7a, T6, T20 U2
     else: cautious mask (halved on a flat u')                             T12, T22
 10. U ← U ⊙ E; while t < W: SPD (rank-aware λ) or θ ← θ − U               T11a, T25
 11. Vs ← 0.9·Vs + 0.1·var(u', dim=−1)                                     T23a

``compat="upstream"`` reproduces 803cb56's numerics (with its default enable_cache=True buffer path),
including the compounding post-warm-up mask [I-10], the TAM blow-up of 2-D states [I-09] (keep
W ≤ 500), the W//2 vs W/2 phase split [I-49] and the 10000-element correlation switch [I-18]. It does
not modify `p.grad` [I-03]: the processed gradient is a working copy, used wherever upstream reads the
mutated `p.grad` (the d_coef and SPD condition). Dead state (row_scaling, rank_tracker, detail_tracker,
edge_momentum) is not kept and no tensor cache is held [I-33, I-47]. Where upstream raises, the defined
thing is done: bf16/fp16 eigh and SVD run in fp32; states deleted at W are recreated if needed [I-22];
fp16 parameters get fp32 states [I-24].

``compat="fixed"``:
  * [I-03] the d_coef / SPD condition is −⟨g, θ − θ0⟩ on the raw gradient, θ0 = θ at the first step
    (kept while SPD is active, so it is the paper's anchor, not the previous iterate [I-29]);
  * [I-09, I-18] TAM's s is the scalar cosine per tensor; the emphasis scales a clamped copy;
    m ← βm + (1−β)d;
  * [I-10] after W the mask is scaled by max(η/η_max, 0.1) without being stored;
  * [I-20] RMS clip u/max(RMS/c, 1);  [I-21] the residual is divided by its accumulated weight
    Σ(1−β3)Πβ3 (a bias correction that allows β3 to change at W/2);
  * [I-24, I-25, I-26] fp32 states, mask seeded at the group lr, per-group min/max/bump, lr_max = lr;
  * [I-35] the rank penalty is the gradient of the tail nuclear norm, k·U_tail·V_tailᵀ;
  * [I-47] `beta1_decay` is read from the group; [I-49] one phase split, t < W/2.
The edge, frequency, background and spatial heuristics keep their (documented) formulas [I-35].
"""

from __future__ import annotations

import torch

from . import came_style, edge_suppression, frequency_penalty, low_rank_penalty, lr_mask, spatial_awareness, spd
from .agr import group_abs_sum
from .automagic_base import AutomagicBase
from .config import ImprovedConfig
from .dual_momentum import default_alpha, dual_momentum
from .orthograd import PARALLEL_TOL, orthograd
from .persistence import restore_state_dtypes
from .tam import tam_improved, tam_improved_fixed

AGR_EPS = 1e-10  # the Improved classes' guard in α = |g|/(S + ε)
EARLY_RESIDUAL_BETA = 0.9999  # β3 while TAM runs (hard-coded upstream)
CAUTIOUS_MIN_MEAN = 1e-3


class Automagic_CameAMP_Improved(AutomagicBase):
    """Readable reference of Automagic_CameAMP_Improved. Keyword arguments: upstream's
    `ImprovedOptimizerConfig` (reference.config.ImprovedConfig) plus `compat`."""

    config_class = ImprovedConfig
    magic_version = 2
    edge_variant = "optimized"  # T20 Laplacian variant

    # ------------------------------------------------------------------ state
    def _init_state(self, p, group):
        state = self.state[p]
        dtype = self._state_dtype(p.dtype)
        self._init_common_state(p, group, dtype)
        if self.fixed:
            state["exp_avg_res_weight"] = 0.0  # [I-21] Σ of the residual EMA's weights
        if group["edge_suppression"]:
            self._store(state, "edge_history", torch.zeros(p.shape, dtype=dtype, device=p.device))
        if group["spatial_awareness"]:
            self._store(state, "spatial_variance", torch.ones(p.shape, dtype=dtype, device=p.device))
        if group.get("enable_dual_momentum"):  # S2 only (seed 004's S2o class has none)
            self._store(state, "long_term_momentum", torch.zeros(p.shape, dtype=dtype, device=p.device))
            self._store(state, "mixed_momentum_sq", torch.zeros(p.shape, dtype=dtype, device=p.device))

    def _warm_layout(self, p, group) -> dict:
        state = super()._warm_layout(p, group)
        if 1 < group["warmup_steps"]:  # the SPD anchor θ0, taken by the first step while t < W
            state["pre"] = torch.zeros(p.shape, dtype=self._state_dtype(p.dtype), device=p.device)
        return state

    # ------------------------------------------------------------------ step
    def _step_groups(self):
        for group in self.param_groups:
            updating = self._stepping_params(group)
            if not updating:
                continue
            # T1a: S = Σ|g| over the group (in the state dtype when fixed)
            group_sum = group_abs_sum([p.grad.float() if self.fixed else p.grad for p in updating])
            self._set_floor(group_sum, updating)
            for p in updating:
                self._step_param(p, group, group_sum)

    def _early(self, group, t) -> bool:
        """TAM / OrthoGrad / Grams phase: t < ⌊W/2⌋ upstream, t < W/2 when fixed [I-49]."""
        w = group["warmup_steps"]
        return t < (w / 2 if self.fixed else w // 2)

    def _processed_gradient(self, p, group, grad, group_sum, theta):
        """Steps 1–3: AGR with the edge factor, the frequency and the rank penalties."""
        # α = |g| / (S + 1e-10);  α ← α ⊙ (1 + edge_penalty·E_τ(g))
        alpha = grad.abs() / (group_sum + AGR_EPS)
        if group["edge_suppression"]:
            edge = edge_suppression.edge_penalty(grad, group["edge_threshold"], self.edge_variant)
            alpha = (alpha * (1.0 + group["edge_penalty"] * edge)).to(alpha.dtype)
        # g̃ = g ⊙ (1 − α)
        grad = grad * (1 - alpha)
        # T21b: g̃ ← g̃ − frequency_penalty·R(g̃)
        if group["spatial_awareness"] and grad.dim() >= 2:
            grad = grad.sub(frequency_penalty.finite_difference_penalty(grad), alpha=group["frequency_penalty"])
        # T24: g̃ ← g̃ + P(θ)
        if group["lora_rank_penalty"] and p.dim() == 2:
            grad = grad + self._rank_penalty(theta, group["rank_penalty_strength"])
        return grad

    def _rank_penalty(self, theta, strength):
        if self.fixed:
            return low_rank_penalty.tail_nuclear_gradient(theta, strength)
        if self.config.use_approximate_svd:
            return low_rank_penalty.approximate_penalty(theta, strength)
        return low_rank_penalty.exact_svd_penalty(theta, strength)

    def _step_param(self, p, group, group_sum):
        state, dtype, raw_grad, theta, t = self._open_param(p, group)
        eps1, eps2, _ = group["eps"]
        beta1, beta2, beta3 = group["betas"]
        early = self._early(group, t)

        grad = self._processed_gradient(p, group, raw_grad, group_sum, theta)  # steps 1–3

        # T2 V3
        if group["came"]:
            u, state["exp_avg_sq"] = came_style.scale_v3(
                grad, state["exp_avg_sq"], eps1, group["clip_threshold"], improved_clip=not self.fixed
            )
        else:
            u = grad

        # T15a: dual momentum; m := M
        m = state["exp_avg"]
        if group["enable_dual_momentum"]:
            alpha = group["alpha_mix_ratio"]
            if alpha is None:
                alpha = default_alpha(beta1, group["long_term_beta"])
            x, m, state["long_term_momentum"], state["mixed_momentum_sq"] = dual_momentum(
                u, state["long_term_momentum"], state["mixed_momentum_sq"],
                beta1, beta2, group["long_term_beta"], alpha, eps1,
            )  # fmt: skip
        else:
            x = u

        # T4b TAM while early (β3 = 0.9999), else T5 consistency momentum (β3 = group betas[2])
        beta1_decay = group["beta1_decay"] if self.fixed else self.config.beta1_decay  # [I-47]
        emphasis = group["low_rank_emphasis"] if (group["lora_rank_penalty"] and p.dim() == 2) else 1.0
        if early:
            beta3 = EARLY_RESIDUAL_BETA
            if "s" not in state:  # [I-22] recreated after a resume with a larger W
                state["s"] = m.new_zeros(()) if self.fixed else torch.zeros_like(m)
            tam = tam_improved_fixed if self.fixed else tam_improved
            m, state["s"] = tam(m, state["s"], x, beta1_decay, eps1, emphasis)
        else:
            beta1_t = max(beta1 * beta1_decay**t, 0.4)
            m = m.mul(beta1_t).add(x, alpha=1 - beta1_t)
        state["exp_avg"] = m

        # T3: r ← β3·r + (1−β3)·((u' − m)² + ε2);  U = m ⊙ rsqrt(r)
        r = state["exp_avg_res"].mul(beta3).add(x.sub(m).pow(2).add(eps2), alpha=1.0 - beta3)
        state["exp_avg_res"] = r
        if self.fixed:  # [I-21] divide by the accumulated EMA weight
            state["exp_avg_res_weight"] = beta3 * state["exp_avg_res_weight"] + (1.0 - beta3)
            r = r / state["exp_avg_res_weight"]
        update = m * r.rsqrt()

        # the d_coef / SPD condition: −⟨g̃, θ⟩ upstream [I-03, I-29]; −⟨g, θ − θ0⟩ when fixed
        warm = t < group["warmup_steps"]
        if warm and "pre" not in state:
            state["pre"] = theta.clone()
        condition = None
        if warm:
            if self.fixed:
                condition = spd.spd_condition(raw_grad, theta, state["pre"])
            else:
                condition = spd.spd_condition(grad, theta)

        lr_eff = self._lr_mask(state, group, x, t, condition)  # T8c + T23a

        if early:
            update = orthograd(theta, update, PARALLEL_TOL if self.fixed else 0.0)  # T7a
            update = update.abs() * x.sign()  # T6 (Grams, full replacement)
            if group["edge_suppression"]:  # T20 U2
                update, state["edge_history"] = edge_suppression.suppress_update(
                    update,
                    state.get("edge_history", torch.zeros_like(update)),
                    group["edge_penalty"],
                    self.edge_variant,
                )
        else:
            # T12: φ = 1[U ⊙ u' > 0] / max(mean φ, 1e-3);  T22: halved when var(u') < 1e-6
            mask = (update * x > 0).to(x.dtype)
            mask = mask / mask.mean().clamp(min=CAUTIOUS_MIN_MEAN)
            if group["background_regularization"]:
                mask = mask * spatial_awareness.background_factor(x)
            update = update * mask

        update = (update * lr_eff).to(update.dtype)  # U ← U ⊙ E

        # T11a SPD while t < W (rank-aware λ, T25), else θ ← θ − U
        fired = warm and float(condition) < 0.0
        if fired:
            rank_aware = group["lora_rank_penalty"] and p.dim() == 2
            decay = (
                low_rank_penalty.rank_aware_decay(group["weight_decay"], theta) if rank_aware else group["weight_decay"]
            )
            p.copy_(spd.spd_step(theta, update, state["pre"], decay))
        if warm and not self.fixed:
            # upstream re-anchors every step, before the plain update: θ_{t+1} if SPD fired, else θ_t [I-29]
            state["pre"] = p.detach().to(dtype, copy=True)
        if not fired:
            p.sub_(update)

        # T23a: Vs ← 0.9·Vs + 0.1·var(u', dim=−1)
        if group["spatial_awareness"] and "spatial_variance" in state:
            state["spatial_variance"] = spatial_awareness.update_spatial_variance(state["spatial_variance"], x)

    def _lr_mask(self, state, group, x, t, condition):
        """T8c. While t < W: polarity of u', bump b_s (spatial), d_coef asymmetry while t < W/2, the lr_max
        jump, clamp; stored. After W: upstream scales and stores (compounding [I-10]); fixed: O1's rule."""
        lr = group["lr"]
        mask = state["lr_mask"]
        if t >= group["warmup_steps"]:
            if self.fixed:
                lr_eff, state["lr_max"] = lr_mask.post_warmup_lr_mask(mask, lr, state["lr_max"])
                return lr_eff
            if lr > state["lr_max"]:
                state["lr_max"] = lr
            if lr < state["lr_max"]:
                state["lr_mask"] = mask * (lr / state["lr_max"])
            return state["lr_mask"]
        agree, state["last_polarity"] = lr_mask.polarity_agreement(x, state.get("last_polarity"))
        bump = self._mask_setting(group, "lr_bump")
        if group["spatial_awareness"]:
            vs = state.get("spatial_variance")
            vs = torch.ones_like(mask) if vs is None else vs
            bump = spatial_awareness.spatial_bump(bump, vs, group["detail_preservation"])
        bump_up = bump_down = bump
        if t < group["warmup_steps"] / 2:  # real division here, as upstream [I-49]
            if float(condition) > 0.0:
                bump_up = bump * group["d_coef"]
            if float(condition) < 0.0:
                bump_down = bump * group["d_coef"]
        # M ← M + where(σ > 0, b⁺, −b⁻)
        mask = mask + torch.where(agree > 0, bump_up, -bump_down)
        if lr > state["lr_max"]:
            mask = mask + (lr - state["lr_max"])
            state["lr_max"] = lr
        mask = mask.clamp(min=self._mask_setting(group, "min_lr"), max=self._mask_setting(group, "max_lr"))
        state["lr_mask"] = mask
        state["avg_lr"] = float(mask.mean())
        return mask

    # ------------------------------------------------------------------ persistence, monitoring
    def _load_state_dict(self, state_dict):
        super()._load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict)

    def _report(self):
        print("average lr:", [float(self.state[p]["lr_mask"].mean()) for g in self.param_groups for p in g["params"]
                              if p.grad is not None and "lr_mask" in self.state[p]])  # fmt: skip

    def get_memory_stats(self) -> dict:
        """Upstream's keys (no tensor cache is kept [I-33], so the pools are empty), plus the measured
        state size [I-51]."""
        n_params = sum(p.numel() for g in self.param_groups for p in g["params"])
        measured = {"state_bytes": self.state_bytes(), "state_bytes_per_param": self.state_bytes() / max(n_params, 1)}
        if not self.config.enable_cache:
            return {"cache_disabled": True, **measured}
        return {"cache_size": 0, "max_cache_size": self.config.max_cache_size, "buffer_pools": {}, "total_buffers": 0,
                **measured}  # fmt: skip

    def clear_cache(self) -> None:
        """Upstream empties its tensor cache; there is none here."""
