"""Fast Automagic_CameAMP_Improved: same name, kwargs, compat modes, state and state_dict as
reference.Automagic_CameAMP_Improved, stepped a stack of same-shape tensors at a time.

Each step partitions a group's stepping parameters by (shape, dtype, device, step count). A partition is a
`ShapeStack`: the parameters become views of one stacked θ buffer and each state of `optimizer.state[p]`
a view of one stacked state buffer, so the step (improved_step.py) runs once per partition with batched
ops instead of once per tensor, and nothing is read back to the host. A LoRA of 1,400 tensors has a few
partitions. A partition changes (and its buffers are re-stacked, a copy) only when its parameters'
step counts diverge, after `load_state_dict`, or when a parameter's storage is replaced. A partition
whose parameters do not hold the same state keys is stepped by the reference, tensor by tensor.
"""

from __future__ import annotations

import torch

from reference import automagic_cameamp_improved as readable
from reference import lr_mask, spatial_awareness
from reference.agr import group_abs_sum
from reference.dual_momentum import default_alpha, dual_momentum
from reference.low_rank_penalty import rank_aware_decay
from reference.validation import nonfinite_step_allowed

from . import improved_step as S

# the scalar entries of a parameter's state, kept on the host
HOST_KEYS = ("step", "lr_max", "avg_lr", "exp_avg_res_weight")


class ShapeStack:
    """Same-shape parameters whose θ and tensor states are stacked along a new dim 0."""

    def __init__(self, optimizer, params):
        self.params = params
        self.theta = torch.stack([p.detach() for p in params])
        for i, p in enumerate(params):
            p.data = self.theta[i]
        self.ptrs = [p.data_ptr() for p in params]
        self.optimizer = optimizer
        self.states: dict[str, torch.Tensor] = {}
        for key in self.tensor_keys(optimizer.state[params[0]]):
            self.set(key, torch.stack([optimizer.state[p][key] for p in params]))
        self.avg_lr: torch.Tensor | None = None  # per-tensor means, written to the states lazily

    @staticmethod
    def tensor_keys(state) -> list:
        return [k for k, v in state.items() if torch.is_tensor(v)]

    def valid(self) -> bool:
        return [p.data_ptr() for p in self.params] == self.ptrs

    def set(self, key: str, stacked: torch.Tensor) -> None:
        """Own `stacked` as state `key`; each parameter's state entry becomes a view of it."""
        self.states[key] = stacked
        for i, p in enumerate(self.params):
            self.optimizer.state[p][key] = stacked[i]

    def write(self, key: str, value: torch.Tensor) -> None:
        """Store a new value of state `key` in its buffer."""
        self.states[key].copy_(value)

    def drop(self, key: str) -> None:
        self.states.pop(key, None)
        for p in self.params:
            self.optimizer.state[p].pop(key, None)

    def flush_avg_lr(self) -> None:
        if self.avg_lr is not None:
            for p, value in zip(self.params, self.avg_lr.tolist(), strict=True):
                self.optimizer.state[p]["avg_lr"] = value
            self.avg_lr = None


class Automagic_CameAMP_Improved(readable.Automagic_CameAMP_Improved):
    """Stacked-tensor Automagic_CameAMP_Improved. See reference.Automagic_CameAMP_Improved for the algorithm."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._stacks: dict[tuple, ShapeStack] = {}

    # ------------------------------------------------------------------ partitions
    def _partitions(self, updating) -> list[list]:
        parts: dict = {}
        for p in updating:
            state = self.state[p]
            t = state.get("step", 0) + 1
            parts.setdefault((tuple(p.shape), p.dtype, p.device, t), []).append(p)
        return list(parts.values())

    def _stack_for(self, params) -> ShapeStack | None:
        key = tuple(id(p) for p in params)
        stack = self._stacks.get(key)
        if stack is not None and stack.valid():
            return stack
        keys = [sorted(ShapeStack.tensor_keys(self.state[p])) for p in params]
        if any(k != keys[0] for k in keys):
            return None
        for old in [k for k, s in self._stacks.items() if set(k) & set(key)]:
            self._stacks.pop(old).flush_avg_lr()
        stack = self._stacks[key] = ShapeStack(self, params)
        return stack

    def _flush(self) -> None:
        for stack in self._stacks.values():
            stack.flush_avg_lr()

    # ------------------------------------------------------------------ step
    def _gradients_ok(self) -> bool:
        return True  # checked in _step_groups, on the stacked gradients

    def _step_groups(self):
        plan = []  # (group, stepping params, partitions, stacked gradients)
        for group in self.param_groups:
            updating = self._stepping_params(group)
            if updating:
                parts = self._partitions(updating)
                plan.append((group, updating, parts, [torch.stack([p.grad for p in ps]) for ps in parts]))
        flags = [torch.isfinite(g).all() for _, _, _, grads in plan for g in grads]
        finite = bool(torch.stack(flags).all()) if flags else True  # the step's one host sync
        if not nonfinite_step_allowed(finite, self.nonfinite, type(self).__name__):
            return
        for group, updating, parts, grads in plan:
            group_sum = group_abs_sum([p.grad.float() if self.fixed else p.grad for p in updating])
            for p in updating:
                if len(self.state[p]) == 0:
                    self._init_state(p, group)
            for params, grad in zip(parts, grads, strict=True):
                stack = self._stack_for(params)
                if stack is None:  # mixed state keys: the reference, tensor by tensor
                    self._flush()
                    for p in params:
                        self._step_param(p, group, group_sum)
                else:
                    self._step_stack(stack, grad, group, group_sum)

    def _step_stack(self, stack: ShapeStack, stacked_grad, group, group_sum):
        params, st = stack.params, stack.states
        ndim = params[0].dim()
        dtype = self._state_dtype(params[0].dtype)
        eps1, eps2, _ = group["eps"]
        beta1, beta2, beta3 = group["betas"]
        states = [self.state[p] for p in params]
        for state in states:
            state["step"] += 1
        t = states[0]["step"]
        W = group["warmup_steps"]
        if t == W:
            for key in ("s", "last_polarity", "pre"):
                stack.drop(key)
        early, warm = self._early(group, t), t < W

        raw_grad = stacked_grad.to(dtype)
        theta = stack.theta if stack.theta.dtype == dtype else stack.theta.to(dtype)

        # T1a + T20 U1: α = |g|/(S + 1e-10) ⊙ (1 + edge_penalty·E_τ(g));  g̃ = g ⊙ (1 − α)
        alpha = raw_grad.abs() / (group_sum + S.AGR_EPS)
        if group["edge_suppression"]:
            edge = S.edge_penalty(raw_grad, ndim, group["edge_threshold"])
            alpha = (alpha * (1.0 + group["edge_penalty"] * edge)).to(alpha.dtype)
        grad = raw_grad * (1 - alpha)
        # T21b, T24
        if group["spatial_awareness"] and ndim >= 2:
            grad = grad.sub(S.finite_difference_penalty(grad, ndim), alpha=group["frequency_penalty"])
        rank_aware = group["lora_rank_penalty"] and ndim == 2
        if rank_aware:
            form = "fixed" if self.fixed else ("approximate" if self.config.use_approximate_svd else "exact")
            grad = grad + S.rank_penalty(theta, group["rank_penalty_strength"], form)

        # T2 V3
        if group["came"]:
            u, _ = S.scale_v3(grad, st["exp_avg_sq"], eps1, group["clip_threshold"], not self.fixed)
        else:
            u = grad

        # T15a dual momentum; m := M
        m = st["exp_avg"]
        if group["enable_dual_momentum"]:
            mix = group["alpha_mix_ratio"]
            mix = default_alpha(beta1, group["long_term_beta"]) if mix is None else mix
            x, m, long_term, mixed_sq = dual_momentum(
                u, st["long_term_momentum"], st["mixed_momentum_sq"], beta1, beta2, group["long_term_beta"], mix, eps1
            )
            stack.write("long_term_momentum", long_term)
            stack.write("mixed_momentum_sq", mixed_sq)
        else:
            x = u

        # T4b TAM while early, else T5 consistency momentum
        beta1_decay = group["beta1_decay"] if self.fixed else self.config.beta1_decay
        emphasis = group["low_rank_emphasis"] if rank_aware else 1.0
        if early:
            beta3 = readable.EARLY_RESIDUAL_BETA
            if "s" not in st:
                shape = (len(params),) if self.fixed else m.shape
                stack.set("s", torch.zeros(shape, dtype=m.dtype, device=m.device))
            m, s = S.tam(m, st["s"], x, beta1_decay, eps1, emphasis, ndim, self.fixed)
            stack.write("s", s)
        else:
            beta1_t = max(beta1 * beta1_decay**t, 0.4)
            m = m.mul(beta1_t).add(x, alpha=1 - beta1_t)
        stack.write("exp_avg", m)

        # T3 residual
        r = st["exp_avg_res"].mul_(beta3).add_(x.sub(m).pow(2).add(eps2), alpha=1.0 - beta3)
        if self.fixed:
            for state in states:
                state["exp_avg_res_weight"] = beta3 * state["exp_avg_res_weight"] + (1.0 - beta3)
            r = r / S.per(self._host_column(states, "exp_avg_res_weight", r), r)
        update = m * r.rsqrt()

        # the d_coef / SPD condition per tensor
        if warm and "pre" not in st:
            stack.set("pre", theta.clone())
        condition = None
        if warm:
            source, anchor = (raw_grad, theta - st["pre"]) if self.fixed else (grad, theta)
            condition = -S.tensor_sum(source * anchor)

        lr_eff = self._stack_lr_mask(stack, states, group, x, t, condition)

        if early:
            update = S.orthograd(theta, update, self.fixed)
            update = update.abs() * x.sign()
            if group["edge_suppression"]:
                if "edge_history" not in st:
                    stack.set("edge_history", torch.zeros_like(update))
                update, edge_history = S.suppress_update(update, st["edge_history"], group["edge_penalty"], ndim)
                stack.write("edge_history", edge_history)
        else:
            update = S.cautious(update, x, group["background_regularization"])

        update = (update * lr_eff).to(update.dtype)

        # T11a SPD while warm (per tensor, where c < 0), else θ ← θ − U
        new_theta = theta - update
        if warm:
            decay = rank_aware_decay(group["weight_decay"], theta) if rank_aware else group["weight_decay"]
            new_theta = torch.where(condition < 0.0, S.spd_step(theta, update, st["pre"], decay), new_theta)
        if warm and not self.fixed:
            # upstream re-anchors before the plain update: θ_{t+1} where SPD fired, else θ_t [I-29]
            fired = torch.where(condition < 0.0, new_theta.to(stack.theta.dtype), stack.theta)
            st["pre"].copy_(fired)
        stack.theta.copy_(new_theta)

        # T23a
        if group["spatial_awareness"] and "spatial_variance" in st and ndim >= 2:
            stack.write("spatial_variance", spatial_awareness.update_spatial_variance(st["spatial_variance"], x))

    @staticmethod
    def _host_column(states, key, like: torch.Tensor) -> torch.Tensor:
        """A per-tensor host scalar of the states as a [c] tensor (fp32 unless `like` is fp64)."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        return torch.tensor([s[key] for s in states], dtype=dtype, device=like.device)

    def _stack_lr_mask(self, stack, states, group, x, t, condition):
        """_lr_mask per tensor (T8c + T23a)."""
        lr, st = group["lr"], stack.states
        mask = st["lr_mask"]
        if t >= group["warmup_steps"]:
            for state in states:
                state["lr_max"] = max(state["lr_max"], lr)
            if self.fixed:  # lr_mask.post_warmup_lr_mask per tensor: E = M·max(η/lr_max, 0.1), not stored
                floor = lr_mask.POST_WARMUP_MIN_SCALE
                scale = [max(lr / state["lr_max"], floor) if lr < state["lr_max"] else 1.0 for state in states]
                if all(s == 1.0 for s in scale):
                    return mask
                return mask * S.per(torch.tensor(scale, dtype=mask.dtype, device=mask.device), mask)
            scale = [lr / state["lr_max"] for state in states]
            if any(s != 1.0 for s in scale):  # stored: compounding [I-10]
                stack.write("lr_mask", mask * S.per(torch.tensor(scale, dtype=mask.dtype, device=mask.device), mask))
            return st["lr_mask"]
        if "last_polarity" not in st:
            stack.set("last_polarity", torch.zeros(x.shape, dtype=torch.bool, device=x.device))
        agree, polarity = lr_mask.polarity_agreement(x, st["last_polarity"])
        stack.write("last_polarity", polarity)
        bump = self._mask_setting(group, "lr_bump")
        if group["spatial_awareness"]:
            vs = st.get("spatial_variance")
            vs = torch.ones_like(mask) if vs is None else vs
            bump = spatial_awareness.spatial_bump(bump, vs, group["detail_preservation"])
        bump_up = bump_down = bump
        if t < group["warmup_steps"] / 2:
            scaled = bump * group["d_coef"]
            if not torch.is_tensor(bump):
                bump, scaled = (torch.tensor(b, dtype=torch.float32, device=mask.device) for b in (bump, scaled))
            bump_up = torch.where(condition > 0.0, scaled, bump)
            bump_down = torch.where(condition < 0.0, scaled, bump)
        mask = mask + torch.where(agree > 0, bump_up, -bump_down)
        jumps = [max(lr - state["lr_max"], 0.0) for state in states]
        if any(jumps):
            mask = mask + S.per(torch.tensor(jumps, dtype=torch.float32, device=mask.device), mask)
            for state in states:
                state["lr_max"] = max(state["lr_max"], lr)
        mask = mask.clamp(min=self._mask_setting(group, "min_lr"), max=self._mask_setting(group, "max_lr"))
        stack.write("lr_mask", mask)
        stack.avg_lr = S.rows(mask).mean(1)
        return st["lr_mask"]

    # ------------------------------------------------------------------ persistence
    def state_dict(self):
        self._flush()
        return super().state_dict()

    def _load_state_dict(self, state_dict):
        self._flush()
        self._stacks.clear()
        super()._load_state_dict(state_dict)

    def _report(self):
        self._flush()
        super()._report()
