"""Fast Automagic_CameAMP_Improved_8Bit: same name, kwargs, compat modes, profiles, state and state_dict as
reference.Automagic_CameAMP_Improved_8Bit, stepped a stack of same-shape tensors at a time
(optimized.shape_stack). `improved8_step.stack_step`, compiled, runs once per stack; the 8-bit states'
codes (`<k>_q`, `<k>_q_scale`) are views of stacked buffers, de-quantised and re-quantised inside the graph.

Before the stacks, per group: μ and σ of |g| (T10, while any tensor is early and wd > 0) and the random
walk's noise, drawn tensor by tensor in the group's order from the optimizer's generator, as the reference
draws it, so the two stay bit-identical in distribution and in sequence [I-31].
"""

from __future__ import annotations

import functools

import torch

from reference import automagic_cameamp_improved_8bit as readable
from reference.lr_mask import RANDOM_WALK_RANGE

from . import improved8_step as S
from . import improved_step, stack_codec
from .shape_stack import ShapeStack, StackedSteps, group_abs_sum, host_scalar_dtype, stacked_grad, step_states


class Automagic_CameAMP_Improved_8Bit(StackedSteps, readable.Automagic_CameAMP_Improved_8Bit):
    """Stacked-tensor Automagic_CameAMP_Improved_8Bit. See reference.Automagic_CameAMP_Improved_8Bit."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._blocks: dict[tuple, stack_codec.Blocks] = {}  # by (shape, device)
        self._noise: dict[int, torch.Tensor] = {}  # drawn for this step, by id(state)

    def _early(self, group, t) -> bool:
        return t < group["warmup_steps"] / 2

    def _partition_key(self, p) -> tuple:
        return (*super()._partition_key(p), p.dim() == 2 and self._is_lora(p))

    # ------------------------------------------------------------------ the group pre-pass
    def _group_terms(self, group, updating, parts, group_sum) -> tuple:
        """Returns ([μ, σ] of |g| over the group, None unless wd > 0 and a tensor is early,); draws each
        post-warm-up tensor's noise, in the group's order, for `_walk_noise`."""
        self._noise.clear()
        stats = None
        w = group["warmup_steps"]
        if group["weight_decay"] > 0 and any(self.state[p]["step"] < w / 2 for p in updating):
            stats = self._abs_stats(parts, group_sum)
        for p in updating:
            state = self.state[p]
            if state["step"] + 1 >= w:
                self._noise[id(state)] = super()._walk_noise(state, state["lr_mask"])
        return (stats,)

    def _abs_stats(self, parts, group_sum) -> torch.Tensor:
        """[μ, σ] = mean and population std of |g| over the group's gradients (group_abs_stats), from the
        stacks in fp32, in the dtype the reference takes them in. μ's Σ|g| is the group's S where that is summed
        in fp32 (the corrected mode: the same sums), else summed again in fp32; σ's is one compiled
        pass, stacking the gradients a stack at a time."""
        grads = [p.grad for ps in parts for p in ps]
        dtype = torch.float32 if self.fixed else functools.reduce(torch.promote_types, (g.dtype for g in grads))
        n = sum(g.numel() for g in grads)
        abs_total = group_sum if self.fixed else group_abs_sum(parts, fp32=True)
        mu = abs_total / n
        var = torch.stack([improved_step.fused_abs_deviation_sumsq(stacked_grad(ps), mu) for ps in parts]).sum() / n
        return torch.stack([mu, var.sqrt()]).to(dtype)

    def _step_param(self, p, group, group_sum, stats):
        mu, sigma = (None, None) if stats is None else (stats[0], stats[1])
        super()._step_param(p, group, group_sum, mu, sigma)

    def _walk_noise(self, state, mask):
        return self._noise.pop(id(state))

    # ------------------------------------------------------------------ the stack step
    def _step_stack(self, stack: ShapeStack, stacked_grad, group, group_sum, stats):
        """Host bookkeeping (step counts, states that start or end, the mask's warm-up shape), the rank
        penalty, then `improved8_step.fused_stack_step`."""
        params, st = stack.params, stack.states
        p0, ndim = params[0], params[0].dim()
        states, t, early, warm, dtype, theta = self._open_stack(stack, group)

        if warm and not self._has_stacked(stack, "s"):  # a resume with a larger W [I-22]
            for state in states:
                self._store(state, "s", theta.new_zeros(() if self.fixed else theta.shape[1:]))
            self._adopt(stack, states)
        had_polarity = "last_polarity" in st
        if warm and not self.fixed and not had_polarity:
            stack.set("last_polarity", torch.zeros(theta.shape, dtype=torch.bool, device=theta.device))
        warm_shape = (*theta.shape[:-1], 1) if ndim > 1 else theta.shape
        if warm and st["lr_mask"].shape != warm_shape:  # E has the row norms' shape from t = 1 on
            stack.set("lr_mask", st["lr_mask"].new_empty(warm_shape))

        rank_term = None
        k = group["rank_penalty_strength"]
        if group["lora_rank_penalty"] and ndim == 2:  # T24, batched SVD outside the graph
            rank_term = improved_step.rank_penalty(theta, 1.0, "fixed") if self.fixed else \
                improved_step.rank_penalty(theta, k, "exact")  # fmt: skip
        noise = None
        if not warm:
            drawn = [self._noise.pop(id(state)) for state in states]
            noise = torch.stack(drawn) if len(drawn) > 1 else drawn[0][None]

        flags = S.Flags(
            ndim=ndim,
            dtype=dtype,
            fixed=self.fixed,
            came=group["came"],
            warm=warm,
            early=early,
            edge=group["edge_suppression"],
            frequency=group["frequency_penalty"] > 0,
            polarity=had_polarity,
            spatial=group["spatial_awareness"] and "spatial_variance" in st and p0.numel() > 1,
            lora=ndim == 2 and self._is_lora(p0) and p0.shape[1] > 1,
            decay=early and group["weight_decay"] > 0,
        )
        beta1, beta2, beta3 = group["betas"]
        consts = S.Consts(
            eps1=group["eps"][0],
            eps2=group["eps"][1],
            beta1=beta1,
            one_minus_beta1=1 - beta1,
            beta2=beta2,
            beta3=beta3,
            edge_threshold=group["edge_threshold"],
            edge_penalty=group["edge_penalty"],
            frequency_penalty=group["frequency_penalty"],
            rank_strength=k,
            adaptation_rate=group["adaptation_rate"],
            weight_decay=group["weight_decay"],
        )
        lr, w = group["lr"], group["warmup_steps"]
        ramp = lr * t / w if t < w else lr  # T8e's warm-up ramp, read only while t < W (W = 0: never)
        scalars = (ramp, lr * RANDOM_WALK_RANGE[0], lr * RANDOM_WALK_RANGE[1], consts.beta1, consts.one_minus_beta1)
        uncompiled = self._uncompiled(dtype, early, stack)
        if not uncompiled:  # the fields a scheduler moves are inputs of the graph (S.Consts)
            scalars = torch.tensor(scalars, dtype=host_scalar_dtype(dtype), device=theta.device)
            consts = consts._replace(beta1=scalars[S.BETA1], one_minus_beta1=scalars[S.ONE_MINUS_BETA1])
        blocks = self._blocks_for(stack) if any(key.endswith("_q") for key in st) else None
        passed = step_states(st)
        step = S.stack_step if uncompiled else S.fused_stack_step
        step(
            stack.theta, stacked_grad, group_sum, self._floor, passed, scalars, stats, rank_term, noise, blocks, flags,
            consts
        )  # fmt: skip
        stack.take_rebound(passed)  # an upstream bf16 mask that took E's fp32 dtype

    def _blocks_for(self, stack: ShapeStack) -> stack_codec.Blocks:
        key = (tuple(stack.theta.shape[1:]), stack.theta.device)
        if key not in self._blocks:
            self._blocks[key] = stack_codec.blocks_for(*key, exact_zero=self.fixed)
        return self._blocks[key]

    def _drop_stacked(self, stack: ShapeStack, key: str) -> None:
        """A state and its codes, as the reference's `_drop`."""
        for name in (key, *(f"{key}_{part}" for part in stack_codec.PARTS)):
            stack.drop(name)


def create_improved_8bit_optimizer(params, profile: str | None = None, **kwargs):
    """Upstream's factory (reference.create_improved_8bit_optimizer): `profile` defaults to 'balanced'."""
    return Automagic_CameAMP_Improved_8Bit(params, profile=profile or "balanced", **kwargs)
