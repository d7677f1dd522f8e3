"""Automagic_CameAMP_Improved_8Bit (spec optimizers.md O7; not seed 004's class, see O8).

Upstream: `hinablue/sd-scripts`, `library/automagic_cameamp_improved_8bit.py` @ 863c5b5 (its last
version; 1bba43e deleted the file).

Per-parameter pipeline (t after increment, W = warmup_steps; WARM = t < W, EARLY = t < W/2):
  1. g̃ = g ⊙ (1 − |g|/(S + 1e-8))                                                       T1a
  2. g' = g̃ + edge_penalty·E_τ(g̃) + frequency_penalty·P(g̃) + k·(k·θ)                    T20 U3, T21a, T24
  3. m ← β1 m + (1−β1) g'
  4. came: v ← β2 v + (1−β2)(g'² + ε1), u = g' ⊙ rsqrt(v);                              T2 (no clip)
     else: r ← β3 r + (1−β3)((g' − m)² + ε1), v likewise, u = m/(√r + ε2)               T3
  5. WARM: U = s, the T4c "TAM" state; else U = m ⊙ (1 + 0.1·tanh(m ⊙ u))                T4c, T5
  6. EARLY: U ← OrthoGrad(θ, U)                                                          T7a
  7. E = η·t/W · row factor (WARM), else a clamped random walk of E                      T8e
  8. E ← E ⊙ clamp(Vs/(var U + 1e-8), 0.5, 2) after Vs ← 0.99 Vs + 0.01 var U           T23b
  9. E ← E ⊙ clamp(rowvar(U)/mean, 0.1, 10) for 2-D θ with an `_is_lora_layer` attribute  T9d
 10. EARLY and wd > 0: θ ← θ ⊙ (1 − E·wd·ϑ), z standardised with σ + 1e-8                T10
 11. θ ← θ − U ⊙ E

Storage (T19c, [I-16]): upstream calls `F.quantize_8bit`/`F.dequantize_8bit`, which bitsandbytes does not
have, so its 8-bit path raises on its first step. Here m, s, v and r are stored as blockwise dynamic 8-bit
codes (reference.blockwise_8bit: bitsandbytes' signed tree code, per-block fp32 absmax, B = 4096) when the
state is fp32 and the tensor has ≥ `min_8bit_size` elements, or for any size with `force_8bit=True`, its
documented meaning (upstream inverts the flag [I-17]). Upstream also requires CUDA, only because of those
functions; the codec runs on every device, so the device does not matter here. The arithmetic is fp32 on
dequantised values; the LR mask and Vs stay unquantised. With 8-bit off (small tensors, or a large
`min_8bit_size`), ``compat="upstream"`` is upstream's numerics bit for bit (tools/upstream_improved8_parity.py).

``compat="upstream"`` keeps upstream's formulas, including: the update U = s during warm-up, whose sign is
that of m ⊙ u (agreement), not of the gradient, so it is not a descent direction (found here, see
tam.tam_as_update); the polarity that counts every s ≠ 0 as True; OrthoGrad written back into s [I-06];
phases t < W (TAM, schedule) vs t < W/2 (OrthoGrad, WD) [I-49]; k²θ as the rank penalty [I-35]; no weight
decay after W/2 [I-48]. Where upstream raises or returns NaN, the defined thing is done: came=False
creates its own v [I-13]; one-element tensors skip T23b and one-column rows get ρ = 1 in T9d (upstream's
unbiased variances are NaN there); bf16/fp16 FFT and SVD run in fp32; fp16 parameters get fp32 states
[I-24]; s is recreated at zeros if a warm branch finds it missing [I-22]. The random walk draws from the
optimizer's own generator (`seed`, saved in the state_dict), not torch's global RNG [I-31]. Dead state
(lr_max, avg_lr, edge_history, edge_momentum, detail_tracker; r when came=True) is not kept [I-47].

``compat="fixed"``:
  * [I-18] warm-up TAM: s ← a·s + (1−a)·cos(m, u) is a 0-d scalar and U = ((1 + s)/2)·m, a descent
    direction on the post-warm-up scale; no polarity state;
  * [I-06] OrthoGrad out of place (s is not modified), with the parallel guard of reference.orthograd;
  * [I-35] the rank penalty is k·U_tail·V_tailᵀ (the tail nuclear norm's gradient), k applied once;
  * [I-24, I-25] fp32 states, the mask seeded at the group lr; `_is_lora_layer` must be truthy;
  * Vs is one fp32 scalar per tensor: upstream's full-size Vs only ever receives scalars.
Profiles [I-17]: `profile=` uses upstream's `OptimizationProfiles` values in both modes (the second table
in `Improved8BitOptimizerConfig._apply_profile` is unreachable from the constructor and not reproduced).
"""

from __future__ import annotations

import warnings

import torch

from . import edge_suppression, frequency_penalty, low_rank_penalty, lr_mask
from .adaptive_weight_decay import decay_factor, group_abs_stats
from .agr import agr, group_abs_sum
from .allora import row_variance_scaling
from .automagic_base import AutomagicBase
from .checkpoint import check_state_dict
from .checkpoint_layout import as_held
from .config import Improved8BitConfig
from .orthograd import PARALLEL_TOL, orthograd
from .persistence import pop_wide_state, restore_state_dtypes, save_wide_state
from .sharding import whole_tensor_load, whole_tensor_save
from .spatial_awareness import spatial_lr_factor
from .state_8bit import Blockwise8bitStates
from .tam import tam_as_update, tam_as_update_fixed

AGR_EPS = 1e-8  # this class's guard in α = |g|/(S + ε)
ADAPTIVE_WD_EPS = 1e-8  # z = (ḡ − μ)/(σ + 1e-8)
CONSISTENCY_GAIN = 0.1  # U = m ⊙ (1 + 0.1·tanh(m ⊙ u)) after warm-up
QUANTIZED = ("exp_avg", "s", "exp_avg_sq", "exp_avg_res")
MAGIC_IMPROVED_8BIT_VERSION = 1

# upstream's `OptimizationProfiles` (the table its constructor uses [I-17])
PROFILES = {
    "memory_optimized": dict(lr=1e-4, force_8bit=True, min_8bit_size=1024, edge_suppression=False,
                             spatial_awareness=False, verbose=False),
    "quality_optimized": dict(lr=1e-4, edge_suppression=True, edge_penalty=0.15, background_regularization=True,
                              spatial_awareness=True, lora_rank_penalty=True, verbose=True),
    "balanced": dict(lr=1e-4, min_8bit_size=4096, edge_suppression=True, edge_penalty=0.1,
                     background_regularization=True, spatial_awareness=True, lora_rank_penalty=True, verbose=True),
}  # fmt: skip


def _bitsandbytes_version() -> str:
    try:
        import bitsandbytes
    except ImportError:
        return "not_available"
    return str(getattr(bitsandbytes, "__version__", "unknown"))


class Automagic_CameAMP_Improved_8Bit(Blockwise8bitStates, AutomagicBase):
    """Readable reference of Automagic_CameAMP_Improved_8Bit. Keyword arguments: upstream's
    `Improved8BitOptimizerConfig` (reference.config.Improved8BitConfig), `profile`, `compat` and `seed`."""

    config_class = Improved8BitConfig
    mask_clamped = False  # min_lr and max_lr are accepted and ignored [I-17, I-47]

    def __init__(self, params, **kwargs):
        profile = kwargs.pop("profile", None)
        if profile is not None:
            if profile not in PROFILES:
                raise ValueError(f"profile must be one of {sorted(PROFILES)} or None, got {profile!r}")
            kwargs = {**PROFILES[profile], **kwargs}  # the caller's kwargs override the profile
        super().__init__(params, **kwargs)
        self.profile = profile
        self.generator = torch.Generator().manual_seed(self.config.seed)  # the random walk's RNG [I-31]

    # ------------------------------------------------------------------ state
    def _uses_8bit(self, p, dtype) -> bool:
        c = self.config
        return dtype == torch.float32 and (c.force_8bit or p.numel() >= c.min_8bit_size)

    def _store(self, state, key, value):
        if state["use_8bit"] and key in QUANTIZED and value.dim() > 0:
            super()._store(state, key, value)  # blockwise 8-bit codes + absmax
        else:
            state[key] = value

    def _init_state(self, p, group):
        state = self.state[p]
        dtype = self._state_dtype(p.dtype)

        def zeros():
            return torch.zeros(p.shape, dtype=dtype, device=p.device)

        state["step"] = 0
        state["use_8bit"] = self._uses_8bit(p, dtype)
        state["lr_mask"] = torch.full(p.shape, float(self._start_lr(group)), dtype=torch.float32, device=p.device)
        self._store(state, "exp_avg", zeros())
        if self.fixed:
            state["s"] = torch.zeros((), dtype=torch.float32, device=p.device)
        else:
            state["last_polarity"] = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            self._store(state, "s", zeros())
        self._store(state, "exp_avg_sq", zeros())  # [I-13] also when came=False
        if not group["came"]:
            self._store(state, "exp_avg_res", zeros())
        if group["spatial_awareness"]:
            vs_shape = () if self.fixed else p.shape
            state["spatial_variance"] = torch.ones(vs_shape, dtype=dtype, device=p.device)

    def _warm_layout(self, p, group) -> dict:
        state = super()._warm_layout(p, group)
        if 1 < group["warmup_steps"] and p.dim() > 1:  # the warm-up mask is per row (T8e)
            state["lr_mask"] = torch.zeros((*p.shape[:-1], 1), dtype=torch.float32, device=p.device)
        return state

    # ------------------------------------------------------------------ step
    def _step_groups(self):
        for group in self.param_groups:
            updating = self._stepping_params(group)
            if not updating:
                continue
            grads = [p.grad.float() if self.fixed else p.grad for p in updating]
            group_sum = group_abs_sum(grads)  # T1a: S = Σ|g|
            self._set_floor(group_sum, updating)
            mu = sigma = None
            half_warmup = group["warmup_steps"] / 2
            if group["weight_decay"] > 0 and any(self.state[p].get("step", 0) < half_warmup for p in updating):
                mu, sigma = group_abs_stats(grads)  # T10: μ, σ of |g| over the group
            for p in updating:
                self._step_param(p, group, group_sum, mu, sigma)

    def _penalised_gradient(self, group, grad, theta):
        """Step 2: g' = g̃ + edge_penalty·E_τ(g̃) + frequency_penalty·P(g̃) + k·L(θ). As upstream, all three terms
        are summed (zeros where a term is off) before they are added."""
        edge = torch.zeros_like(grad)
        if group["edge_suppression"]:  # T20 U3: E_τ(g̃), full Laplacian
            edge = edge_suppression.edge_penalty(grad, group["edge_threshold"], "full")
        freq = torch.zeros_like(grad)
        if group["frequency_penalty"] > 0:  # T21a
            freq = frequency_penalty.fft_penalty(grad)
        rank = torch.zeros_like(theta)
        k = group["rank_penalty_strength"]
        if group["lora_rank_penalty"] and theta.dim() == 2:  # T24: L = U·diag(k·S)·Vh = k·θ (fixed: tail gradient)
            rank = low_rank_penalty.tail_nuclear_gradient(theta, 1.0) if self.fixed else \
                low_rank_penalty.exact_svd_penalty(theta, k)  # fmt: skip
        total = group["edge_penalty"] * edge + group["frequency_penalty"] * freq + k * rank
        return grad + total

    def _step_param(self, p, group, group_sum, mu, sigma):
        state, dtype, raw_grad, theta, t = self._open_param(p, group)
        w = group["warmup_steps"]
        warm, early = t < w, t < w / 2
        beta1, beta2, beta3 = group["betas"]
        eps1, eps2, _ = group["eps"]

        grad = agr(raw_grad, group_sum, AGR_EPS)  # step 1
        grad = self._penalised_gradient(group, grad, theta)  # step 2

        # step 3: m ← β1·m + (1−β1)·g'   (states are updated in place, as upstream, so they keep their dtype)
        m = self._load(state, "exp_avg")
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        # step 4
        v = self._load(state, "exp_avg_sq")
        if group["came"]:
            # v ← β2·v + (1−β2)·(g'² + ε1);  u = g' ⊙ rsqrt(v)
            v.mul_(beta2).add_(grad.pow(2) + eps1, alpha=1 - beta2)
            u = grad * v.rsqrt()
        else:
            # r ← β3·r + (1−β3)·((g' − m)² + ε1);  v likewise (kept, unused [I-13]);  u = m/(√r + ε2)
            r = self._load(state, "exp_avg_res")
            r.mul_(beta3).add_((grad - m).pow(2) + eps1, alpha=1 - beta3)
            v.mul_(beta2).add_(grad.pow(2) + eps1, alpha=1 - beta2)
            u = m / (r.sqrt() + eps2)
            self._store(state, "exp_avg_res", r)
        self._store(state, "exp_avg_sq", v)

        # step 5: the T4c direction while warm, else consistency-weighted momentum
        if warm:
            update = self._tam_direction(state, group, m, u, dtype, theta)
        else:
            # U = m ⊙ (1 + 0.1·tanh(m ⊙ u))
            update = m * (1.0 + CONSISTENCY_GAIN * torch.tanh(m * u))
        self._store(state, "exp_avg", m)

        # step 6: T7a while early; upstream orthogonalises s itself, in place [I-06]
        if early:
            update = orthograd(theta, update, PARALLEL_TOL if self.fixed else 0.0)
            if warm and not self.fixed:
                self._store(state, "s", update)

        lr_eff = self._lr_schedule(state, group, grad, t)  # step 7

        # step 8, T23b: Vs ← 0.99·Vs + 0.01·var(U);  E ← E ⊙ clamp(Vs/(var(U) + 1e-8), 0.5, 2)
        if group["spatial_awareness"] and "spatial_variance" in state and update.numel() > 1:
            factor, state["spatial_variance"] = spatial_lr_factor(state["spatial_variance"], update)
            lr_eff = lr_eff * factor

        # step 9, T9d: rows of a LoRA matrix scaled by their variance ratio
        if p.dim() == 2 and self._is_lora(p):
            lr_eff = lr_eff * row_variance_scaling(update)

        # step 10, T10: θ ← θ ⊙ (1 − E·wd·ϑ) while early
        if early and group["weight_decay"] > 0:
            vartheta = decay_factor(raw_grad, mu, sigma, ADAPTIVE_WD_EPS)
            p.mul_(1 - lr_eff * group["weight_decay"] * vartheta)

        # step 11: θ ← θ − U ⊙ E
        p.sub_(update * lr_eff)

    def _tam_direction(self, state, group, m, u, dtype, theta):
        """T4c (upstream) or its corrected form. Returns U and stores s (and the polarity)."""
        rate = group["adaptation_rate"]
        if self.fixed:
            update, state["s"] = tam_as_update_fixed(m, state.get("s", m.new_zeros(())), u, rate)
            return update
        s = self._load(state, "s") if self._has(state, "s") else torch.zeros_like(theta)  # [I-22]
        s, state["last_polarity"] = tam_as_update(m, s, u, rate, state.get("last_polarity"))
        self._store(state, "s", s)
        return s

    def _lr_schedule(self, state, group, grad, t):
        """T8e: the warm-up ramp with its row factor (stored), then the random walk (stored). Returns E."""
        lr = group["lr"]
        if t < group["warmup_steps"]:
            state["lr_mask"] = lr_mask.warmup_schedule(lr, t, group["warmup_steps"], grad)
        else:
            mask = state["lr_mask"]
            state["lr_mask"] = lr_mask.random_walk(mask, lr, self._walk_noise(state, mask))
        return state["lr_mask"]

    def _walk_noise(self, state, mask):
        """z ~ N(0, 1) of the mask's shape and dtype, from the optimizer's generator [I-31]."""
        return torch.randn(mask.shape, generator=self.generator, dtype=mask.dtype).to(mask.device)

    def _is_lora(self, p) -> bool:
        """T9d applies to `_is_lora_layer` parameters: any such attribute upstream, a truthy one when fixed."""
        return bool(getattr(p, "_is_lora_layer", False)) if self.fixed else hasattr(p, "_is_lora_layer")

    # ------------------------------------------------------------------ persistence, monitoring
    @whole_tensor_save
    def state_dict(self):
        sd = super().state_dict()
        sd["magic_improved_8bit_version"] = MAGIC_IMPROVED_8BIT_VERSION
        sd["bitsandbytes_version"] = _bitsandbytes_version()
        save_wide_state(sd, "rng_state", self.generator.get_state())
        return sd

    @whole_tensor_load
    def load_state_dict(self, state_dict):
        state_dict, rng_state = pop_wide_state(as_held(self, state_dict), "rng_state")
        check_state_dict(self, state_dict)  # before the generator changes
        extra = ("magic_improved_8bit_version", "bitsandbytes_version")
        if state_dict.get("magic_improved_8bit_version") != MAGIC_IMPROVED_8BIT_VERSION:
            warnings.warn("loaded a state dict without magic_improved_8bit_version=1", stacklevel=2)
        if rng_state is not None:
            self.generator.set_state(rng_state)
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in extra})

    def _load_state_dict(self, state_dict):
        super()._load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict)

    def _report(self):
        r = self.get_memory_efficiency_report()
        print(f"memory: 8bit params={r['8bit_parameters']}, 32bit params={r['32bit_parameters']}, "
              f"ratio={r['compression_ratio']:.2%}")  # fmt: skip

    def get_memory_efficiency_report(self) -> dict:
        """Upstream's keys. `memory_saved_mb` and `states_breakdown` (bytes per state name) are measured from
        the tensors, where upstream estimates 3 bytes per 8-bit parameter and leaves the breakdown empty."""
        report = {"bitsandbytes_available": _bitsandbytes_version() != "not_available", "total_parameters": 0,
                  "8bit_parameters": 0, "32bit_parameters": 0, "memory_saved_mb": 0.0, "compression_ratio": 0.0,
                  "states_breakdown": {}}  # fmt: skip
        saved = 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                report["total_parameters"] += p.numel()
                report["8bit_parameters" if state.get("use_8bit") else "32bit_parameters"] += p.numel()
                for key, value in state.items():
                    if torch.is_tensor(value):
                        size = value.numel() * value.element_size()
                        report["states_breakdown"][key] = report["states_breakdown"].get(key, 0) + size
                        if key.endswith("_q"):  # vs the fp32 tensor it replaces: 4 B/element − codes − absmax
                            saved += 4 * value.numel() - size - state[f"{key}_scale"].numel() * 4
        report["memory_saved_mb"] = saved / 2**20
        if report["total_parameters"]:
            report["compression_ratio"] = report["8bit_parameters"] / report["total_parameters"]
        return report


def create_improved_8bit_optimizer(params, profile: str | None = None, **kwargs):
    """Upstream's factory: `profile` defaults to 'balanced' (lr 1e-4, verbose) [I-17]."""
    return Automagic_CameAMP_Improved_8Bit(params, profile=profile or "balanced", **kwargs)
