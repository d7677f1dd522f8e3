"""Automagic_CameAMP8bit: Automagic_CameAMP with blockwise 8-bit states (spec optimizers.md O2).

Upstream: `hinablue/sd-scripts`, `library/automagic_cameamp.py` @ 863c5b5 (= main @ 1bba43e).

States `lr_mask`, `exp_avg`, `exp_avg_sq`, `exp_avg_res`, `s` and `row_scaling` are stored as
bitsandbytes blockwise dynamic 8-bit codes, B = 4096 (T19a, reference.state_8bit); each step
de-quantises, updates in fp32 and re-quantises. The step itself uses the fp32 values it just computed.

Pipeline, where it differs from Automagic_CameAMP (O1):
  * CAME-style scaling V2 (v first, then u; no first-step skip): θ moves at t = 1.      T2 V2
  * U = m ⊙ rsqrt(r), without O1's + ε2.                                                T3
  * LR mask T8b: no (η − lr_max) jump while warming up; after warm-up the scaled mask
    M·max(η/lr_max, 0.1) is stored, so the scaling compounds every step [I-10].

``compat="fixed"`` is the default. ``compat="upstream"`` (for parity studies) reproduces these numerics, including
upstream's explosion on simple problems (a 2-layer MLP regression at lr 1e-3 goes from loss 1.7 to ~9e3 in
12 steps; equivalence_tests/test_torch_contract.py) and two storage quirks: the residual r is never
re-quantised, so every step sees r = (1−β3)·((u − m̄)² + ε2) [I-08]; and an fp32 copy of v is kept in
the state (memory only; it is not saved) [I-11b]. Unlike upstream, the state_dict holds plain tensors
and `load_state_dict` restores every quantised state, so a run resumes [I-11a, e]; no
`torch.cuda.synchronize()` [I-04]; the probe of bitsandbytes is an import [I-23].

``compat="fixed"`` applies the corrections of Automagic_CameAMP(compat="fixed") (see its docstring) and
these: r is re-quantised [I-08]; no fp32 copy of v [I-11b]; the LR mask follows O1's rule, i.e. the
scaled post-warm-up mask is not stored [I-10]; U = m ⊙ (rsqrt(r/(1−β3^t)) + ε2) as in O1's fixed mode.
TAM's s is then a scalar per tensor and is kept in fp32 rather than quantised.
"""

from __future__ import annotations

import torch

from . import adabelief_residual, came_style, lr_mask
from .allora import allora_row_scaling, allora_row_scaling_fixed
from .automagic_cameamp import Automagic_CameAMP
from .grams import grams_alpha, grams_blend
from .orthograd import PARALLEL_TOL, orthograd
from .state_8bit import Blockwise8bitStates


class Automagic_CameAMP8bit(Blockwise8bitStates, Automagic_CameAMP):
    """Readable reference of Automagic_CameAMP8bit. Keyword arguments and defaults are upstream's (O1 table)."""

    def _init_state(self, p, group):
        self._init_common_state(p, group, torch.float32)  # states are fp32 before quantisation
        if not group["full_finetune"] and p.dim() == 2:
            fresh = allora_row_scaling_fixed if self.fixed else allora_row_scaling
            self._store(self.state[p], "row_scaling", fresh(p.detach(), group["eta"]))

    def _step_param(self, p, group, group_sum, mu, sigma):
        state, raw_grad, grad, t = self._begin_param(p, group, group_sum)
        _, beta2, beta3 = group["betas"]
        eps1, eps2, _ = group["eps"]
        early = t < group["warmup_steps"] / 2

        # T2 V2: second-moment scaling (or the ADOPT clip)
        if group["came"]:
            u, v = came_style.scale_v2(grad, self._load(state, "exp_avg_sq"), beta2, eps1, group["clip_threshold"])
            self._store(state, "exp_avg_sq", v)
            if not self.fixed:
                state["exp_avg_sq"] = v  # [I-11b] upstream also keeps the fp32 v (never read, not saved)
        else:
            u = came_style.adopt_clip(grad, t)

        m, m_bar = self._momentum(state, u, group, t)  # T4a / T5, from the de-quantised m

        # T3: residual; upstream uses the stored (always zero) r and never stores the new one [I-08]
        r = adabelief_residual.update_residual(self._load(state, "exp_avg_res"), u, m_bar, beta3, eps2)
        if self.fixed:
            self._store(state, "exp_avg_res", r)
            update = adabelief_residual.residual_direction(m, r, eps2, 1 - beta3**t)
        else:
            # U = m ⊙ rsqrt(r)   (no + ε2 in this class)
            update = m * r.rsqrt()

        # T6: Grams blend; T7a: OrthoGrad while early
        update = grams_blend(update, grad, grams_alpha(group["beta1_decay"], t))
        if early:
            update = orthograd(p, update, PARALLEL_TOL if self.fixed else 0.0)

        lr_eff = self._lr_mask(state, group, grad, t)

        # T9a: ALLoRA rows
        if self._has(state, "row_scaling"):
            if self.fixed:  # [I-28]
                self._store(state, "row_scaling", allora_row_scaling_fixed(p, group["eta"]))
            rho = self._load(state, "row_scaling")
            lr_eff = lr_eff * (rho if self.fixed else rho.to(p.dtype))

        self._apply_update(p, group, update, lr_eff, raw_grad, mu, sigma, t)  # T10, θ ← θ − U ⊙ E

    def _lr_mask(self, state, group, grad, t):
        """T8b upstream; Automagic_CameAMP's T8a when fixed [I-10]. The mask is stored 8-bit. Returns E."""
        if self.fixed:
            return super()._lr_mask(state, group, grad, t)
        lr = group["lr"]
        mask = self._load(state, "lr_mask")
        if t >= group["warmup_steps"]:
            new, state["lr_max"] = lr_mask.post_warmup_lr_mask(mask, lr, state["lr_max"])
            self._store(state, "lr_mask", new)  # [I-10] the scaled mask is stored: it compounds
            return new
        agree, state["last_polarity"] = lr_mask.polarity_agreement(grad, state.get("last_polarity"))
        # T8b has no (η − lr_max) jump: lr_max = η keeps it from firing, and state["lr_max"] is not touched
        new, _ = lr_mask.warmup_lr_mask(
            mask, agree, lr, lr, self.defaults["lr_bump"], self.defaults["min_lr"], self.defaults["max_lr"]
        )
        self._store(state, "lr_mask", new)
        state["avg_lr"] = float(new.mean())
        return new

    def _state_dict(self):
        sd = super()._state_dict()

        # [I-11b] the fp32 copy of v beside the quantised one is not saved (upstream drops it too); a 0-d
        # parameter's v is not quantised, so it is its only copy and is kept
        def without_v_copy(saved):
            if not isinstance(saved, dict):  # an entry that is not a parameter's (torch keeps those)
                return saved
            return {k: v for k, v in saved.items() if not (k == "exp_avg_sq" and "exp_avg_sq_q" in saved)}

        sd["state"] = {pid: without_v_copy(saved) for pid, saved in sd["state"].items()}
        return sd
