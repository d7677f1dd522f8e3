"""Automagic_CameAMP_COptim and Automagic_CameAMP_COptim8bit (spec optimizers.md O4, O5).

Upstream: `hinablue/sd-scripts`, `library/automagic_cameamp.py` @ 863c5b5 (the last commit with them).

COptim is Automagic_CameAMP with:
  * CAME-style scaling V2 (no first-step skip)                                    T2 V2
  * multi-scale momenta μ_k ← 0.9μ_k + 0.1g̃ every k steps, and their 1/k-weighted
    mean C as the momentum's input in place of u (u still feeds the residual)      T17
  * the contextual multiplier Λ and the edge factor: E ← E·Λ·ef after the LR mask  T16.6, T16.7
The context (reference.contextual_lr) learns only from losses. Upstream feeds it only when `step()`
gets a closure, which sd-scripts never passes, so there Λ ≡ 1.2 (code_s1) and edge ≡ False [I-02].
Here `step(closure=None, loss=None)` also takes the loss directly, or `observe_loss(loss)` before
`step()`; without a loss the behaviour is upstream's. The gradient signal of the context is upstream's
RMS of per-tensor gradient norms (a positive scalar, so gc ≡ 1 [I-36]); in fixed mode it is the vector
of per-tensor gradient means, whose consecutive cosines measure whether the gradient keeps its direction.

``compat="upstream"``: upstream numerics. Λ and the edge flag are evaluated per group, as upstream;
the stagnation branch draws from the module's own seeded generator [I-31]; the histories, counters and
generator are saved in the state_dict (upstream saves none of them [I-11c]). `momentum_scales` is
accepted (upstream COptim rejects it [I-37]).
``compat="fixed"``: the corrections of Automagic_CameAMP(compat="fixed"), plus: Λ is computed once per observed
loss and cached, so every group gets the same Λ and monitoring consumes no randomness [I-31]; the vector gradient
signal above [I-36].

COptim8bit: upstream raises at the first step in every configuration [I-12, I-13], so it has no
upstream numerics. Both modes implement the intended definition (spec O5 b): COptim's numerics in that
mode, with `exp_avg`, `exp_avg_sq`, `exp_avg_res`, `s`, `lr_mask`, `momentum_scale_k` and `row_scaling`
stored as blockwise 8-bit codes (reference.state_8bit), no fp32 copies, the end-of-warm-up cleanup,
and every state (8-bit pairs and the context) saved and restored. The literal helper semantics
(torque via `torch.cross`, adaptive β1, relative mask) are not implemented: upstream never ran them.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from . import adabelief_residual, came_style
from .allora import allora_row_scaling_fixed
from .automagic_cameamp import Automagic_CameAMP
from .config import COptimConfig
from .contextual_lr import ContextualOptimizationModule
from .grams import grams_alpha, grams_blend
from .orthograd import PARALLEL_TOL, orthograd
from .persistence import pop_wide_state, save_wide_state
from .sharding import whole_tensor_step
from .state_8bit import Blockwise8bitStates

MULTISCALE_BETA = 0.9  # T17, hard-coded upstream
MODULE_DEFAULTS = {"context_window": 50, "edge_threshold": 0.9, "adaptation_rate": 0.1}  # [I-19]


class ContextualOptimization:
    """The C-Optim context around a step (spec O4 'Global context pass', 'Per group'): the module, the
    loss it learns from (closure, `loss=` or `observe_loss`), Λ and the edge flag per group, and its
    histories in the state_dict. Mixed into the reference and the optimized COptim classes."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        # upstream builds the module from the kwargs actually passed, not from the group defaults [I-19]
        module_kwargs = {k: kwargs.get(k, v) for k, v in MODULE_DEFAULTS.items()}
        if "edge_threshold" in kwargs or "adaptation_rate" in kwargs:
            warnings.warn("edge_threshold and adaptation_rate have no effect (as upstream) [I-37]", stacklevel=2)
        self.c_optim = ContextualOptimizationModule(
            **module_kwargs, preset=self.config.preset, seed=self.config.seed, cache_multiplier=self.fixed
        )
        self.momentum_scales = list(self.config.momentum_scales)
        self._pending_loss = None
        self._told_no_loss = False  # the one warning of a step without a loss (see `step`)

    @torch.no_grad()
    @whole_tensor_step
    def step(self, closure=None, loss=None):
        """One step. The loss for the context comes from the closure (run with grad enabled), from
        `loss=`, or from an earlier `observe_loss()`; the closure's loss is returned."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._gradients_ok():  # a skipped step observes no loss either
            return loss if closure is not None else None
        self._warn_if_bounds_moved()
        if loss is None:
            loss, self._pending_loss = self._pending_loss, None
        if loss is not None:
            self._observe_context(float(loss))
        elif not self._told_no_loss:
            self._told_no_loss = True
            warnings.warn(f"{type(self).__name__}.step() got no loss: the contextual multiplier stays upstream's "
                          "constant 1.2. Pass step(loss=...) or call observe_loss(loss) before step() (with HF "
                          "Trainer: see the README's 'C-Optim under HF Trainer')", stacklevel=2)  # fmt: skip
        self._step_groups()
        if self.verbose:
            print(f"Lr: {[group['lr'] for group in self.param_groups]}")
        return loss if closure is not None else None

    def observe_loss(self, loss) -> None:
        """Give the context this step's loss without a closure (used by the next `step()`)."""
        self._pending_loss = float(loss)

    def _observe_context(self, loss: float) -> None:
        """T16.2: the gradient signal, the loss and the last group's lr go into the context. Under torch.distributed
        the loss is the mean over the ranks (`loss_over_ranks`)."""
        params = [p for g in self.param_groups for p in g["params"]]
        loss = loss_over_ranks(loss, params[0].device if params else torch.device("cpu"))
        if not any(p.grad is not None for p in params):
            return
        signal = self._gradient_signal(params)
        if not bool(torch.isfinite(signal).all()):  # a NaN/Inf gradient: the step is refused or skipped
            return
        self.c_optim.update_context(signal, loss, self.param_groups[-1]["lr"])

    def _gradient_signal(self, params):
        """T16.2's gradient signal of the parameters' gradients (some have one)."""
        if self.fixed:  # [I-36] a vector signal: the mean gradient of each tensor
            # one entry per parameter, 0 where it has no gradient this step, so consecutive signals always
            # have the same length and their cosine (T16.3) is defined
            return torch.stack([
                p.grad.float().mean() if p.grad is not None and p.numel() else p.new_zeros((), dtype=torch.float32)
                for p in params
            ])  # fmt: skip
        # r = sqrt(mean_q ‖g_q‖²)
        norms = [p.grad.norm().item() for p in params if p.grad is not None]
        return torch.tensor((sum(n * n for n in norms) / len(norms)) ** 0.5)

    def _group_context(self):
        """(Λ, edge), per group as upstream; in fixed mode the module caches Λ, so every group gets the
        same values and no randomness is consumed [I-31]."""
        return self.c_optim.compute_contextual_lr_multiplier(), self.c_optim.detect_edge_case()

    def _state_dict(self):
        sd = super()._state_dict()
        save_wide_state(sd, "c_optim_state", self.c_optim.context_state())
        sd["momentum_scales"] = list(self.momentum_scales)
        return sd

    def _load_state_dict(self, state_dict):
        state_dict, context = pop_wide_state(state_dict, "c_optim_state")
        scales = state_dict.pop("momentum_scales", None)
        if scales is not None and list(scales) != self.momentum_scales:
            raise ValueError(f"state_dict momentum_scales {list(scales)} differ from {self.momentum_scales}")
        super()._load_state_dict(state_dict)
        if context is not None:
            self.c_optim.load_context_state(context)


class Automagic_CameAMP_COptim(ContextualOptimization, Automagic_CameAMP):
    """Readable reference of Automagic_CameAMP_COptim. Keyword arguments: the O1 table plus
    `momentum_scales`, `preset` (T16.8 constant set) and `seed` (the context's generator)."""

    config_class = COptimConfig

    def _init_state(self, p, group):
        super()._init_state(p, group)  # the O1 state
        state = self.state[p]
        dtype = self._work_dtype(p)
        state["edge_case_count"] = 0
        state["contextual_lr_multiplier"] = 1.0
        for k in self.momentum_scales:  # T17
            self._store(state, f"momentum_scale_{k}", torch.zeros(p.shape, dtype=dtype, device=p.device))
            state[f"momentum_count_{k}"] = 0

    def _step_param(self, p, group, group_sum, mu, sigma, multiplier, edge):
        state, raw_grad, grad, t = self._begin_param(p, group, group_sum)

        # T17: μ_k ← 0.9·μ_k + 0.1·g̃ when t mod k == 0
        scales = {k: self._load(state, f"momentum_scale_{k}") for k in self.momentum_scales}
        for k in self.momentum_scales:
            if t % k == 0:
                scales[k] = scales[k].mul(MULTISCALE_BETA).add(grad, alpha=1 - MULTISCALE_BETA)
                self._store(state, f"momentum_scale_{k}", scales[k])
                state[f"momentum_count_{k}"] += 1

        # T16.7: edge factor
        if edge:
            state["edge_case_count"] += 1
            edge_factor = self.c_optim.edge_factor()
        else:
            edge_factor = 1.0
            state["edge_case_count"] = max(0, state["edge_case_count"] - 1)

        _, beta2, beta3 = group["betas"]
        eps1, eps2, _ = group["eps"]
        early = t < group["warmup_steps"] / 2

        # T2 V2
        if group["came"]:
            u, v = came_style.scale_v2(grad, self._load(state, "exp_avg_sq"), beta2, eps1, group["clip_threshold"])
            self._store(state, "exp_avg_sq", v)
        else:
            u = came_style.adopt_clip(grad, t)

        # T17: C = Σ_{k: c_k>0} μ_k/k / Σ 1/k, the momentum's input
        active = [k for k in self.momentum_scales if state[f"momentum_count_{k}"] > 0]
        if active:
            # the μ_k of this step as computed (8bit: not their stored codes; O5 b is O4's numerics)
            weighted = [scales[k] * (1.0 / k) for k in active]
            contextual = sum(weighted) / sum(1.0 / k for k in active)
        else:
            contextual = u

        m, m_bar = self._momentum(state, contextual, group, t)  # T4a / T5 with input C

        # T3: residual with u
        r = adabelief_residual.update_residual(self._load(state, "exp_avg_res"), u, m_bar, beta3, eps2)
        self._store(state, "exp_avg_res", r)
        update = adabelief_residual.residual_direction(m, r, eps2, 1 - beta3**t if self.fixed else 1.0)

        # T6, T7a
        update = grams_blend(update, grad, grams_alpha(group["beta1_decay"], t))
        if early:
            update = orthograd(p, update, PARALLEL_TOL if self.fixed else 0.0)

        # T8a: LR mask, then the contextual factor
        lr_eff = self._lr_mask(state, group, grad, t)
        lr_eff = lr_eff * multiplier * edge_factor
        state["contextual_lr_multiplier"] = multiplier * edge_factor

        # T9a
        if self._has(state, "row_scaling"):
            dtype = self._work_dtype(p)
            if self.fixed:  # [I-28]
                self._store(state, "row_scaling", allora_row_scaling_fixed(p, group["eta"]).to(dtype))
            lr_eff = lr_eff * self._load(state, "row_scaling").to(dtype)

        self._apply_update(p, group, update, lr_eff, raw_grad, mu, sigma, t)  # T10, θ ← θ − U ⊙ E


class Automagic_CameAMP_COptim8bit(Blockwise8bitStates, Automagic_CameAMP_COptim):
    """COptim with blockwise 8-bit states: the intended definition of spec O5 (b), in both modes."""

    def _work_dtype(self, p):
        return torch.float32


def loss_over_ranks(loss: float, device) -> float:
    """The mean of `loss` over the ranks of torch.distributed's default group (one all_reduce), or `loss` without
    torch.distributed. Each rank passes the loss of its own batch; a context that learned from it alone would learn
    from another loss on each rank, none of them the loss one process sees (under DDP, 2 ranks: 2.6e-3 from the
    one-process run after 10 steps). The mean is the loss of the global batch when the ranks' batches are of one
    size, what one process training on that batch sees."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss
    total = torch.tensor([loss], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item() / dist.get_world_size())
