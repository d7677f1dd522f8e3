"""Seed 004's Automagic_CameAMP_8Bit with Optimizer8BitConfig (spec optimizers.md O8, techniques.md T18).

No upstream code exists: seed 004 documents the class, but no commit contains it [I-01]. Following the
spec's decision, its numerics are the S2o Improved pipeline (`automagic_cameamp_improved.py` @ 0b433bc)
with states stored by the block min/max uint8 codec with error feedback (reference.minmax_8bit).
With `quantize_states=False` it reproduces S2o bit for bit in fp32 (tools/upstream_s2o_parity.py; bf16
matches with edge suppression off, see there).

S2o per-parameter pipeline (t after increment, W = warmup_steps, "early" = t < W/2):
  1. α = |g|/(S + 1e-10) ⊙ (1 + edge_penalty·E_τ(g)) (full Laplacian); g̃ = g ⊙ (1 − α)   T1a, T20 U1
  2. g̃ ← g̃ − frequency_penalty·FFT-penalty(g̃) (2-D, spatial_awareness)                 T21a
  3. g̃ ← g̃ + U·diag(k·S)·Vh(θ) (= kθ; 2-D, lora_rank_penalty)                            T24
  4. u = V3 scaling (β2 = 0.999, clip u/max(RMS/c, 1))                                   T2 V3
  5. early: TAM (N₀ ⊙ N₀, γ = 0.9, unstored emphasis), β3 = 0.9999; else consistency    T4b (S2o), T5
  6. r ← β3 r + (1−β3)((u − m)² + ε2);  U = m ⊙ rsqrt(r)                                  T3
  7. E = LR mask (polarity of g̃, spatial bump; post-W scaled, not stored, no floor)      T8c (S2o)
  8. early: Grams U ← |U| ⊙ sign(g̃), edge suppression; else cautious mask + background    T6, T20 U2, T12, T22
  9. U ← U ⊙ E; while t < W: SPD (T11b, anchor 0 at t = 1, SVD-count λ) or θ ← θ − U    T11b, T25
 10. Vs ← 0.9·Vs + 0.1·var(g̃, dim=−1)                                                     T23a

Storage (spec O8, T18): `exp_avg`, `exp_avg_sq`, `exp_avg_res`, `s`, `edge_history` (and with
`mixed_precision=False` also `lr_mask`, `spatial_variance`) are quantised when `quantize_states` and
numel > block_size, as `<k>_q` (uint8), `<k>_scale`, `<k>_zero` (fp32 per block) and, with
`error_correction`, `<k>_err` (fp32, the error accumulator). A read dequantises; a write quantises x + e
and keeps the new residual. Every `sync_frequency` steps the accumulator is folded into the codes and
zeroed. The arithmetic runs in fp32 on dequantised values. Dead S2o state (row_scaling, rank_tracker,
detail_tracker, edge_momentum) is not kept [I-47].

``compat="fixed"`` applies Improved's corrections where S2o has the same bug: the SPD anchor θ0 and
raw-gradient condition [I-29], bounded scalar TAM [I-09, I-18], the 0.1 floor of the post-W scale [I-10],
residual bias correction [I-21], fp32 states and per-group mask settings [I-24–I-26], and the
tail-nuclear-norm rank penalty [I-35].
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from . import came_style, edge_suppression, frequency_penalty, low_rank_penalty, lr_mask, minmax_8bit, spd
from .automagic_cameamp_improved import AGR_EPS, CAUTIOUS_MIN_MEAN, EARLY_RESIDUAL_BETA, Automagic_CameAMP_Improved
from .checkpoint import check_state_dict
from .checkpoint_layout import as_held
from .config import Optimizer8BitConfig
from .sharding import whole_tensor_load, whole_tensor_save
from .spatial_awareness import background_factor, spatial_bump, update_spatial_variance
from .tam import TAM_DECAY, tam_improved_fixed, tam_s2o

QUANTIZED = ("exp_avg", "exp_avg_sq", "exp_avg_res", "s", "edge_history")
QUANTIZED_WITHOUT_MIXED_PRECISION = ("lr_mask", "spatial_variance")
PARTS = ("q", "scale", "zero", "err")
MAGIC8_VERSION = 1


@dataclasses.dataclass
class QuantizedState:
    """One quantised state tensor, as seed 004's `optimizer.quantized_states[param_id][name]`."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    error_accumulator: torch.Tensor | None


class Automagic_CameAMP_8Bit(Automagic_CameAMP_Improved):
    """Seed 004's 8-bit optimizer. Keyword arguments: `Optimizer8BitConfig` (reference.config)."""

    config_class = Optimizer8BitConfig
    edge_variant = "full"

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        c = self.config
        if c.adaptive_block_size or c.min_block_size is not None or c.max_block_size is not None:
            warnings.warn("adaptive_block_size, min_block_size and max_block_size are experimental in seed 004 "
                          "and ignored here", stacklevel=2)  # fmt: skip

    # ------------------------------------------------------------------ storage (T18)
    def _quantized_key(self, key, value) -> bool:
        c = self.config
        keys = QUANTIZED if c.mixed_precision else QUANTIZED + QUANTIZED_WITHOUT_MIXED_PRECISION
        return c.quantize_states and key in keys and value.numel() > c.block_size

    def _load(self, state, key):
        if f"{key}_q" in state:
            return minmax_8bit.dequantize(state[f"{key}_q"], state[f"{key}_scale"], state[f"{key}_zero"],
                                          self.config.block_size)  # fmt: skip
        return state[key]

    def _store(self, state, key, value):
        if not self._quantized_key(key, value):
            state[key] = value
            return
        error = None
        if self.config.error_correction:
            error = state.get(f"{key}_err")
            error = torch.zeros(value.shape, dtype=torch.float32, device=value.device) if error is None else error
        q, scale, zero, error = minmax_8bit.store_with_feedback(value, error, self.config.block_size)
        state[f"{key}_q"], state[f"{key}_scale"], state[f"{key}_zero"] = q, scale, zero
        if error is not None:
            state[f"{key}_err"] = error

    def _has(self, state, key):
        return key in state or f"{key}_q" in state

    def _drop(self, state, key):
        state.pop(key, None)
        for part in PARTS:
            state.pop(f"{key}_{part}", None)

    def _sync(self, state):
        """Every `sync_frequency` steps: x ← D(Q(D(q) + e)), e ← 0 (spec O8 decision)."""
        for key in QUANTIZED + QUANTIZED_WITHOUT_MIXED_PRECISION:
            if f"{key}_err" in state:
                value = self._load(state, key) + state[f"{key}_err"]
                q, scale, zero, _ = minmax_8bit.store_with_feedback(value, None, self.config.block_size)
                state[f"{key}_q"], state[f"{key}_scale"], state[f"{key}_zero"] = q, scale, zero
                state[f"{key}_err"] = torch.zeros_like(state[f"{key}_err"])

    # ------------------------------------------------------------------ step
    def _early(self, group, t) -> bool:
        return t < group["warmup_steps"] / 2  # S2o: real division everywhere

    def _step_param(self, p, group, group_sum):
        state, dtype, raw_grad, theta, t = self._open_param(p, group)
        eps1, eps2, _ = group["eps"]
        beta1, _, beta3 = group["betas"]
        early = self._early(group, t)

        # T1a + T20 U1 (full variant; S2o multiplies out of place)
        alpha = raw_grad.abs() / (group_sum + AGR_EPS)
        if group["edge_suppression"]:
            alpha = alpha * (1.0 + group["edge_penalty"] * edge_suppression.edge_penalty(
                raw_grad, group["edge_threshold"], "full"))  # fmt: skip
        grad = raw_grad * (1 - alpha)
        # T21a: g̃ ← g̃ − frequency_penalty·P(g̃)
        if group["spatial_awareness"] and grad.dim() >= 2:
            grad = grad - group["frequency_penalty"] * frequency_penalty.fft_penalty(grad)
        # T24 exact form: g̃ ← g̃ + U·diag(k·S)·Vh (= kθ); corrected: the tail-nuclear-norm gradient
        if group["lora_rank_penalty"] and p.dim() == 2:
            penalty = low_rank_penalty.tail_nuclear_gradient if self.fixed else low_rank_penalty.exact_svd_penalty
            grad = grad + penalty(theta, group["rank_penalty_strength"])

        # T2 V3
        if group["came"]:
            u, v = came_style.scale_v3(grad, self._load(state, "exp_avg_sq"), eps1, group["clip_threshold"],
                                       improved_clip=False)  # fmt: skip
            self._store(state, "exp_avg_sq", v)
        else:
            u = grad

        # T4b (S2o) TAM while early, else T5
        m = self._load(state, "exp_avg")
        if early:
            beta3 = EARLY_RESIDUAL_BETA
            if self._has(state, "s"):
                s = self._load(state, "s")
            else:  # [I-22]
                s = m.new_zeros(()) if self.fixed else torch.zeros_like(m)
            emphasis = group["low_rank_emphasis"] if (group["lora_rank_penalty"] and p.dim() == 2) else 1.0
            if self.fixed:
                m, s = tam_improved_fixed(m, s, u, TAM_DECAY, eps1, emphasis)
            else:
                m, s = tam_s2o(m, s, u, eps1, emphasis)
            self._store(state, "s", s)
        else:
            beta1_t = max(beta1 * group["beta1_decay"] ** t, 0.4)
            m = m.mul(beta1_t).add(u, alpha=1 - beta1_t)
        self._store(state, "exp_avg", m)

        # T3
        r = self._load(state, "exp_avg_res").mul(beta3).add((u - m).pow(2) + eps2, alpha=1.0 - beta3)
        self._store(state, "exp_avg_res", r)
        if self.fixed:
            state["exp_avg_res_weight"] = beta3 * state["exp_avg_res_weight"] + (1.0 - beta3)
            r = r / state["exp_avg_res_weight"]
        update = m * r.rsqrt()

        lr_eff = self._lr_mask(state, group, grad, t)  # T8c (S2o)

        if early:
            update = update.abs() * grad.sign()  # T6
            if group["edge_suppression"]:  # T20 U2
                has_history = self._has(state, "edge_history")
                history = self._load(state, "edge_history") if has_history else torch.zeros_like(update)
                update, history = edge_suppression.suppress_update(update, history, group["edge_penalty"], "full")
                self._store(state, "edge_history", history)
        else:  # T12 + T22
            mask = (update * grad > 0).to(grad.dtype)
            mask = mask / mask.mean().clamp(min=CAUTIOUS_MIN_MEAN)
            if group["background_regularization"]:
                mask = mask * background_factor(grad)
            update = update * mask
        update = update * lr_eff

        # T11b SPD while t < W
        fired = False
        if t < group["warmup_steps"]:
            if self.fixed and not self._has(state, "pre"):
                state["pre"] = theta.clone()  # θ0 = the first-step weights, kept until W [I-29]
            anchor = state["pre"] if "pre" in state else torch.zeros_like(theta)  # S2o: 0 at t = 1
            condition = spd.spd_condition(raw_grad if self.fixed else grad, theta, anchor)
            if float(condition) < 0.0:
                decay = group["weight_decay"]
                if group["lora_rank_penalty"] and p.dim() == 2:  # T25 (S2o)
                    decay = low_rank_penalty.rank_aware_decay_s2o(decay, theta)
                p.copy_(spd.spd_step_s2o(theta, update, anchor, decay))
                fired = True
            if not self.fixed:
                state["pre"] = p.detach().to(dtype, copy=True)
        if not fired:
            p.add_(update, alpha=-1)

        # T23a on g̃
        if group["spatial_awareness"] and self._has(state, "spatial_variance") and grad.dim() >= 2:
            self._store(state, "spatial_variance", update_spatial_variance(self._load(state, "spatial_variance"), grad))

        sync = self.config.sync_frequency
        if sync and t % sync == 0:
            self._sync(state)

    def _lr_mask(self, state, group, grad, t):
        """T8c (S2o): while t < W the stored mask moves by ±b_s (polarity of g̃); after W the scale
        η/lr_max is applied without being stored and without a floor (fixed: O1's 0.1 floor)."""
        lr = group["lr"]
        mask = self._load(state, "lr_mask")
        if t >= group["warmup_steps"]:
            if self.fixed:
                lr_eff, state["lr_max"] = lr_mask.post_warmup_lr_mask(mask, lr, state["lr_max"])
                return lr_eff
            if lr > state["lr_max"]:
                state["lr_max"] = lr
            return mask * (lr / state["lr_max"]) if lr < state["lr_max"] else mask
        agree, state["last_polarity"] = lr_mask.polarity_agreement(grad, state.get("last_polarity"))
        bump = self._mask_setting(group, "lr_bump")
        if group["spatial_awareness"]:
            vs = self._load(state, "spatial_variance") if self._has(state, "spatial_variance") else None
            bump = spatial_bump(bump, torch.ones_like(mask) if vs is None else vs, group["detail_preservation"])
        new = torch.where(agree > 0, mask + bump, mask - bump)
        if lr > state["lr_max"]:
            new = new + (lr - state["lr_max"])
            state["lr_max"] = lr
        new = torch.clamp(new, min=self._mask_setting(group, "min_lr"), max=self._mask_setting(group, "max_lr"))
        self._store(state, "lr_mask", new)
        state["avg_lr"] = float(new.mean())
        return new

    # ------------------------------------------------------------------ persistence, monitoring
    def _report(self):
        print("average lr:", [state["avg_lr"] for _, state in self._indexed_states()])

    @whole_tensor_save
    def state_dict(self):
        sd = super().state_dict()
        sd["magic8_version"] = MAGIC8_VERSION
        sd["block_size"] = self.config.block_size
        return sd

    @whole_tensor_load
    def load_state_dict(self, state_dict):
        state_dict = as_held(self, state_dict)
        check_state_dict(self, state_dict)
        block_size = state_dict.get("block_size", self.config.block_size)
        if block_size != self.config.block_size:
            raise ValueError(f"state_dict['block_size'] is {block_size}, this optimizer's is {self.config.block_size}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("magic8_version", "block_size")})

    def _indexed_states(self):
        params = [p for g in self.param_groups for p in g["params"]]
        return [(i, self.state[p]) for i, p in enumerate(params) if p in self.state]

    @property
    def quantized_states(self) -> dict:
        """{param index: {state name: QuantizedState}} (seed 004's attribute)."""
        out = {}
        for i, state in self._indexed_states():
            names = [k[: -len("_q")] for k in state if k.endswith("_q")]
            out[i] = {n: QuantizedState(state[f"{n}_q"], state[f"{n}_scale"], state[f"{n}_zero"],
                                        state.get(f"{n}_err")) for n in names}  # fmt: skip
        return out

    @property
    def high_precision_states(self) -> dict:
        """{param index: {state name: tensor}} for the states kept unquantised (seed 004's attribute)."""
        out = {}
        for i, state in self._indexed_states():
            quantized = {f"{k[: -len('_q')]}_{part}" for k in state if k.endswith("_q") for part in PARTS}
            out[i] = {k: v for k, v in state.items() if torch.is_tensor(v) and k not in quantized}
        return out

    def get_memory_stats(self) -> dict:
        """Seed 004's keys, measured from the tensors (spec O8 decisions)."""
        quantized_bytes = high_bytes = fp32_bytes = 0
        n_quantized = n_high = 0
        for i, states in self.quantized_states.items():
            for qs in states.values():
                n_quantized += 1
                quantized_bytes += qs.q.numel() + 4 * (qs.scale.numel() + qs.zero.numel())
                if qs.error_accumulator is not None:
                    quantized_bytes += 4 * qs.error_accumulator.numel()
                fp32_bytes += 4 * qs.q.numel()
            for v in self.high_precision_states[i].values():
                n_high += 1
                high_bytes += v.numel() * v.element_size()
                fp32_bytes += 4 * v.numel()
        return {
            "total_quantized_memory": quantized_bytes,
            "total_high_precision_memory": high_bytes,
            "compression_ratio": (quantized_bytes + high_bytes) / fp32_bytes if fp32_bytes else 1.0,
            "quantized_params": n_quantized,
            "high_precision_params": n_high,
        }
