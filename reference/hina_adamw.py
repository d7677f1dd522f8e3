"""HinaAdamWOptimizer (alias CustomAdamW), the "Custom AdamW" of seed 001 (spec optimizers.md O9).

Upstream: `hinablue/sd-scripts`, `library/custom_hina_adamw_optimizer.py` @ 9d42f8b (branch lora-train).
Upstream subclasses bitsandbytes' AdamW8bit but never uses its 8-bit state [I-42], and current
bitsandbytes refuses its constructor [I-43]; this is plain PyTorch. The AdamW8bit arguments are
accepted: `optim_bits=8` stores m and v of tensors with ≥ `min_8bit_size` elements as bitsandbytes
blockwise 8-bit codes (reference.blockwise_8bit, B = 4096); `amsgrad`, `percentile_clipping`,
`block_wise`, `is_paged` and `args` are ignored, as upstream ignores them.

Dead state (found here): upstream stores `exp_avg_sq_prev` (v̄), but each step overwrites it with v before
reading it, so the saved v̄ is never read. It is not kept (spec I-47's rule for dead state: no numeric
effect; 4 bytes/param less), and a checkpoint that has it (upstream's) loads with it dropped.

Per parameter with a gradient (t = its step after increment, η = group lr):
  1. use_orthogonal_grad: g ← g − (⟨θ,g⟩/⟨θ,θ⟩)θ for ndim ≥ 2              T7c  orthograd.project_out
  2. use_agr: g̃ = g·(1 + |Σg|/‖g‖)                                      T1b  agr.agr_hina
  3. Adam moments; use_adopt_stability: one-step-stale denominator        T13  adopt_stability
     U = m/denom, step size η·√(1−β2^t)/(1−β1^t)
  4. use_tam: U ← U·(1 + A)/2, A an EMA of cos(m, g̃)                     T4e  tam.tam_damping
  5. use_grams: U ← |U|·sign(g̃)                                          T6
  6. use_cautious: U ← U·1[U·g̃ > 0] (a no-op after step 5)               T12  cautious.cautious_mask_hina
  7. use_alora: the step size × the LoRA/LoKr factor of this parameter     T26  lora_names
  8. θ ← θ − step·U
  9. θ ← θ − η·wd·m_t·θ, m_t the dynamic multiplier of LoRA/LoKr factors   T14  dynamic_weight_decay
 10. use_spd: θ ← θ − η·λ·(‖θ−θ0‖/‖θ‖)·(θ−θ0), θ0 = θ at construction     T11d spd

Parameter names come from `named_parameters()` (torch stores them in the group as `param_names`) or
from kohya's `named` list in a param group; a parameter without a name is 'regular'.

``compat="upstream"``: the 9d42f8b numerics and LoRA rules (reference.lora_names). Unlike upstream,
`diagnose_lora_pairing()` does not raise [I-44] and SPD anchors are saved with the state [I-34]
(upstream loses them, so a resume re-anchors at the resume-time weights).
``compat="fixed"``: token-based names, pairing across groups and ×alora_ratio for every B [I-44];
A bias-corrected by 1 − τβ^t, so the TAM factor does not start at ½ [I-41]; the stale denominator is
√max(v̄, v) + ε. Without that floor (upstream), a LoRA A whose first gradient is exactly 0 (B = 0) is
divided by ε at t = 2 and jumps by ~10⁷·g (found here; reference.adopt_stability). The technique names
differ from the papers they cite [I-40]; the numerics are kept and the differences documented per module.
"""

from __future__ import annotations

import numbers

import torch

from . import adopt_stability, blockwise_8bit, lora_names, spd
from .agr import agr_hina, group_abs_sum
from .cautious import cautious_mask_hina
from .checkpoint import check_state_dict, check_states
from .checkpoint_layout import as_held, saving_warm_layout
from .dynamic_weight_decay import weight_decay_multiplier
from .orthograd import PARALLEL_TOL, project_out
from .persistence import Copyable, restore_state_dtypes
from .roundoff_floor import floor_roundoff, group_floor
from .sharding import whole_tensor_load, whole_tensor_save, whole_tensor_step
from .tam import tam_damping
from .validation import (
    COMPAT_MODES,
    check_bool,
    check_distinct_params,
    check_grads,
    check_nonfinite_policy,
    gradients_are_finite,
    naming_group,
    nonfinite_step_allowed,
    refuse_tensor,
)

EIGHT_BIT_KEYS = ("exp_avg", "exp_avg_sq")
DEAD_STATE = "exp_avg_sq_prev"  # upstream's v̄, overwritten before every read
IGNORED = ("amsgrad", "args", "percentile_clipping", "block_wise", "is_paged")  # AdamW8bit kwargs [I-42]


def _real(name, value, low, high=None, low_open=False, high_open=False):
    refuse_tensor(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if (
        value < low
        or (low_open and value == low)
        or (high is not None and (value > high or (high_open and value == high)))
    ):
        raise ValueError(f"{name} = {value} is out of range")


def check_group_values(d: dict) -> None:
    """The settings a param group holds (the constructor's, or a group's own)."""
    _real("lr", d["lr"], 0.0)
    if not isinstance(d["betas"], (tuple, list)) or len(d["betas"]) != 2:
        raise ValueError(f"betas must be a pair, got {d['betas']!r}")
    for i, b in enumerate(d["betas"]):
        _real(f"betas[{i}]", b, 0.0, 1.0, high_open=True)
    _real("eps", d["eps"], 0.0, low_open=True)  # ε = 0 divides an exactly-zero gradient element by 0
    _real("weight_decay", d["weight_decay"], 0.0)


class HinaAdamWOptimizer(Copyable, torch.optim.Optimizer):
    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
        optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True,
        is_paged=False, use_spd=True, spd_lambda=0.06, use_cautious=True, use_orthogonal_grad=False,
        use_adopt_stability=True, use_grams=True, use_agr=True, use_tam=True, tam_beta=0.999,
        use_alora=True, alora_ratio=16.0, dynamic_weight_decay=True, wd_transition_steps=1000,
        wd_decay_factor=0.7, wd_min_ratio=0.1, compat="fixed", nonfinite="raise",
    ):  # fmt: skip
        if compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
        check_nonfinite_policy(nonfinite)
        # amsgrad, block_wise and is_paged are ignored, but a string there is a parsing mistake all the same
        switches = dict(use_spd=use_spd, use_cautious=use_cautious, use_orthogonal_grad=use_orthogonal_grad,
                        use_adopt_stability=use_adopt_stability, use_grams=use_grams, use_agr=use_agr,
                        use_tam=use_tam, use_alora=use_alora, dynamic_weight_decay=dynamic_weight_decay,
                        amsgrad=amsgrad, block_wise=block_wise, is_paged=is_paged)  # fmt: skip
        for name, value in switches.items():
            check_bool(name, value)
        check_group_values(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        _real("spd_lambda", spd_lambda, 0.0)
        _real("tam_beta", tam_beta, 0.0, 1.0, high_open=True)
        _real("alora_ratio", alora_ratio, 0.0, low_open=True)
        _real("wd_decay_factor", wd_decay_factor, 0.0, 1.0, low_open=True)
        _real("wd_min_ratio", wd_min_ratio, 0.0, 1.0)
        if isinstance(wd_transition_steps, bool) or not isinstance(wd_transition_steps, int) or wd_transition_steps < 1:
            raise ValueError(f"wd_transition_steps must be a positive integer, got {wd_transition_steps!r}")
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32, got {optim_bits!r}")
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be a non-negative integer, got {min_8bit_size!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.compat, self.optim_bits, self.min_8bit_size = compat, optim_bits, min_8bit_size
        self.nonfinite = nonfinite  # NaN/Inf gradients: "raise" or "skip" the step
        self._floor = None  # the round-off floor of the group being stepped (see `_group_floor`)
        self.use_spd, self.spd_lambda, self.use_cautious = use_spd, spd_lambda, use_cautious
        self.use_orthogonal_grad, self.use_adopt_stability = use_orthogonal_grad, use_adopt_stability
        self.use_grams, self.use_agr, self.use_tam, self.tam_beta = use_grams, use_agr, use_tam, tam_beta
        self.use_alora, self.alora_ratio = use_alora, alora_ratio
        self.dynamic_weight_decay, self.wd_transition_steps = dynamic_weight_decay, wd_transition_steps
        self.wd_decay_factor, self.wd_min_ratio = wd_decay_factor, wd_min_ratio
        self.layout = lora_names.build_layout(self._named_groups(), fixed=self.fixed)
        if use_spd:  # T11d: anchors at construction, kept in the state so they are saved [I-34]
            for group in self.param_groups:
                for p in group["params"]:
                    if p.requires_grad:
                        self.state[p]["spd_anchor"] = p.detach().clone()

    def add_param_group(self, param_group):
        check_distinct_params(param_group)
        self._check_group_settings(param_group, len(self.param_groups))
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self.state[p] = {}  # a placeholder, as reference.AutomagicBase.add_param_group explains

    def _check_group_settings(self, group, index: int) -> None:
        """A group's own settings, or a loaded group's, get the constructor's checks before anything changes
        (reference.AutomagicBase._check_group_settings)."""
        own = {key: group[key] for key in self.defaults if key in group}
        if own:
            with naming_group(index):
                check_group_values({**self.defaults, **own})

    @property
    def fixed(self) -> bool:
        return self.compat == "fixed"

    def _named_groups(self):
        out = []
        for group in self.param_groups:
            names = group.get("named") or group.get("param_names") or []
            out.append([(names[i] if i < len(names) else None, p) for i, p in enumerate(group["params"])])
        return out

    # ------------------------------------------------------------------ state storage
    def _eight_bit(self, key, p) -> bool:
        return self.optim_bits == 8 and key in EIGHT_BIT_KEYS and p.numel() >= self.min_8bit_size

    def _load(self, state, key):
        if f"{key}_q" in state:
            return blockwise_8bit.dequantize(state[f"{key}_q"], state[f"{key}_q_scale"])
        return state[key]

    def _store(self, state, key, value, p):
        if self._eight_bit(key, p):
            state[f"{key}_q"], state[f"{key}_q_scale"] = blockwise_8bit.quantize(value, exact_zero=self.fixed)
        else:
            state[key] = value

    def _init_state(self, p, state):
        dtype = torch.float32 if self._eight_bit("exp_avg", p) else p.dtype
        zeros = torch.zeros(p.shape, dtype=dtype, device=p.device)
        state["step"] = 0
        for key in EIGHT_BIT_KEYS:
            self._store(state, key, zeros, p)
        # TAM's A (T4e), a tensor from the start (as its first step leaves it) where TAM is on
        state["momentum_alignment"] = torch.zeros((), dtype=dtype, device=p.device) if self.use_tam else 0.0

    def _warm_layout(self, p, group) -> dict:
        """The entry `p` holds once stepped (reference.checkpoint_layout): its initial state."""
        state = self.state[p]
        self._init_state(p, state)
        return state

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    @whole_tensor_step
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():  # upstream runs it under no_grad, which breaks backward() [I-02]
                loss = closure()
        check_grads(self.param_groups, type(self).__name__)
        check_states(self)  # a state assigned by hand with another shape or dtype, before any parameter moves
        if not nonfinite_step_allowed(gradients_are_finite(self.param_groups), self.nonfinite, type(self).__name__):
            return loss
        for group in self.param_groups:
            stepping = [p for p in group["params"] if p.grad is not None]
            self._floor = self._group_floor(stepping)
            for p in stepping:
                self._step_param(p, group)
        return loss

    def _group_floor(self, stepping):
        """The group's round-off floor (corrected mode; reference.roundoff_floor), or None."""
        if not self.fixed or not stepping:
            return None
        return group_floor(group_abs_sum([p.grad.float() for p in stepping]), sum(p.numel() for p in stepping))

    def _step_param(self, p, group):
        state = self.state[p]
        if "step" not in state:
            self._init_state(p, state)
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        state["step"] += 1
        t = state["step"]

        grad = p.grad if self._floor is None else floor_roundoff(p.grad, self._floor)
        if self.use_orthogonal_grad:
            grad = project_out(p, grad, PARALLEL_TOL if self.fixed else 0.0)  # T7c
        if self.use_agr:
            grad = agr_hina(grad)  # T1b

        # T13: moments and the stale (or plain) denominator; v̄ is the stored v as it was (not kept: see
        # DEAD_STATE)
        m, v, denom = adopt_stability.adam_moments(
            self._load(state, "exp_avg"), self._load(state, "exp_avg_sq"), grad,
            beta1, beta2, group["eps"], t, stale=self.use_adopt_stability, floor=self.fixed,
        )  # fmt: skip
        self._store(state, "exp_avg", m, p)
        self._store(state, "exp_avg_sq", v, p)
        step_size = adopt_stability.step_size(lr, beta1, beta2, t)
        update = m / denom

        if self.use_tam:  # T4e
            bias_correction = 1 - self.tam_beta**t if self.fixed else 1.0
            factor, state["momentum_alignment"] = tam_damping(
                m, grad, state["momentum_alignment"], self.tam_beta, bias_correction
            )
            update = update * factor
        if self.use_grams:  # T6, replacement form
            update = update.abs() * grad.sign()
        if self.use_cautious:  # T12
            update = cautious_mask_hina(update, grad)
        if self.use_alora:  # T26
            step_size *= self._lora_factor(p)

        p.add_(update, alpha=-step_size)

        # T14: decoupled weight decay with the dynamic multiplier
        weight_decay = group["weight_decay"]
        if self.dynamic_weight_decay:
            kind = self.layout.kinds.get(p, "regular")
            weight_decay *= weight_decay_multiplier(
                kind, t, self.wd_transition_steps, self.wd_decay_factor, self.wd_min_ratio
            )
        if weight_decay != 0:
            p.add_(p, alpha=-lr * weight_decay)

        if self.use_spd and "spd_anchor" in state:  # T11d
            p.add_(spd.spd_hina_penalty(p, state["spd_anchor"], self.spd_lambda), alpha=-lr)

    def _lora_factor(self, p) -> float:
        kind = self.layout.kinds.get(p, "regular")
        if kind.startswith("lokr_"):
            factor = 1.0
            for group in self.layout.lokr_groups.values():
                if any(q is p for q in group.values()):
                    factor *= lora_names.lokr_scale(group)
                    break
            if kind == "lokr_w2":
                factor *= self.alora_ratio * lora_names.LOKR_W2_RATIO
            return factor
        for a, b in self.layout.lora_pairs:
            if a is p:
                return lora_names.lora_a_scale(a, b)
        if kind == "lora_b":
            paired = any(b is p for _, b in self.layout.lora_pairs)
            return self.alora_ratio if (self.fixed or not paired) else 1.0
        return 1.0

    def _twins_created(self, twins: dict) -> None:
        """Under FSDP2 the step sees whole twins of the DTensor parameters (reference.sharding): the LoRA
        layout, keyed by parameter, is rebuilt over them."""
        self.layout = lora_names.build_layout(self._named_groups(), fixed=self.fixed)

    # ------------------------------------------------------------------ persistence, monitoring
    @whole_tensor_save
    def state_dict(self):
        with saving_warm_layout(self):
            return {**super().state_dict(), "optimizer": type(self).__name__}

    @whole_tensor_load
    def load_state_dict(self, state_dict):
        state_dict = as_held(self, state_dict)
        check_state_dict(self, state_dict)
        super().load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict)
        for state in [s for s in self.state.values() if isinstance(s, dict)]:  # upstream's dead v̄
            for key in [k for k in state if k.startswith(DEAD_STATE)]:
                del state[key]

    def get_optimization_info(self) -> dict:
        c = self.layout.counts
        pairs = [g for g in self.layout.lokr_groups.values() if g["w1"] is not None and g["w2"] is not None]
        return {
            "optimizer_type": "HinaAdamWOptimizer",
            "total_params": sum(len(g["params"]) for g in self.param_groups),
            "features": {
                "spd": self.use_spd, "cautious": self.use_cautious, "orthogonal_grad": self.use_orthogonal_grad,
                "adopt_stability": self.use_adopt_stability, "grams": self.use_grams, "agr": self.use_agr,
                "tam": self.use_tam, "alora": self.use_alora, "dynamic_weight_decay": self.dynamic_weight_decay,
                "wd_transition_steps": self.wd_transition_steps, "wd_decay_factor": self.wd_decay_factor,
                "wd_min_ratio": self.wd_min_ratio,
            },
            "lora_stats": {"lora_a_params": c["lora_a"], "lora_b_params": c["lora_b"],
                           "lora_pairs": len(self.layout.lora_pairs)},
            "lokr_stats": {"lokr_w1_params": c["lokr_w1"], "lokr_w2_params": c["lokr_w2"], "lokr_pairs": len(pairs),
                           "lokr_groups": len(self.layout.lokr_groups), "w_norm_params": c["w_norm"],
                           "b_norm_params": c["b_norm"], "norm_pairs": self.layout.norm_pairs},
        }  # fmt: skip

    def diagnose_lora_pairing(self) -> dict:
        """Pairs and unpaired LoRA factors by name (upstream raises once any pair exists [I-44])."""
        names = self.layout.names
        paired = {x for pair in self.layout.lora_pairs for x in pair}
        lora = [(p, kind) for p, kind in self.layout.kinds.items() if kind in ("lora_a", "lora_b")]
        return {
            "pairs": [(names[a], names[b]) for a, b in self.layout.lora_pairs],
            "unpaired_a": [names[p] for p, kind in lora if kind == "lora_a" and p not in paired],
            "unpaired_b": [names[p] for p, kind in lora if kind == "lora_b" and p not in paired],
        }

    def update_device(self, device) -> None:
        """Move every state tensor (SPD anchors included) to `device`."""
        for state in [s for s in self.state.values() if isinstance(s, dict)]:
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(device)


CustomAdamW = HinaAdamWOptimizer
