"""Fast Automagic_CameAMP_8Bit (seed 004): same name, kwargs, compat modes, state and state_dict as
reference.Automagic_CameAMP_8Bit, stepped a stack of same-shape tensors at a time.

The stacks are those of optimized.Automagic_CameAMP_Improved: a partition of a group's parameters by
(shape, dtype, device, step count) whose θ and states (the quantised parts `<k>_q`, `<k>_scale`, `<k>_zero`,
`<k>_err` included) are views of stacked buffers. `seed004_step.stack_step` runs once per stack, compiled,
de-quantising and re-quantising the min/max-coded states inside the graph. The rank penalty (batched SVD) is
computed before it and the periodic error fold (`sync_frequency`) after it, both batched over the stack.
"""

from __future__ import annotations

import torch

from reference import automagic_cameamp_8bit_seed004 as readable
from reference.automagic_cameamp_improved import EARLY_RESIDUAL_BETA
from reference.low_rank_penalty import rank_aware_decay_s2o

from . import improved_step, minmax_codec, stack_blocks
from . import seed004_step as S
from .automagic_cameamp_improved import Automagic_CameAMP_Improved
from .shape_stack import ShapeStack, host_scalar_dtype, step_states


class Automagic_CameAMP_8Bit(Automagic_CameAMP_Improved, readable.Automagic_CameAMP_8Bit):
    """Stacked-tensor Automagic_CameAMP_8Bit. See reference.Automagic_CameAMP_8Bit for the algorithm."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._block_indices: dict[tuple, stack_blocks.BlockIndex] = {}  # by (numel, device)

    def _step_stack(self, stack: ShapeStack, stacked_grad, group, group_sum):
        """Host bookkeeping (step counts, states that start or end, per-tensor host scalars), the rank
        penalty, `seed004_step.fused_stack_step`, then the periodic error fold."""
        params, st = stack.params, stack.states
        ndim = params[0].dim()
        states, t, early, warm, dtype, theta = self._open_stack(stack, group)

        # states a resume with a larger W finds missing [I-22], created as the reference creates them
        if early and not self._has_stacked(stack, "s"):
            for state in states:
                self._store(state, "s", theta.new_zeros(() if self.fixed else theta.shape[1:]))
        if early and group["edge_suppression"] and not self._has_stacked(stack, "edge_history"):
            for state in states:
                self._store(state, "edge_history", torch.zeros_like(theta[0]))
        self._adopt(stack, states)
        if warm and "last_polarity" not in st:
            stack.set("last_polarity", torch.zeros(theta.shape, dtype=torch.bool, device=theta.device))
        if warm and "pre" not in st:  # θ0: the first-step weights (fixed [I-29]); upstream's anchor is 0 at t = 1
            stack.set("pre", theta.clone() if self.fixed else torch.zeros_like(theta))

        rank_aware = group["lora_rank_penalty"] and ndim == 2
        rank_term = None
        if rank_aware:  # T24, batched SVD outside the fused graph
            form = "fixed" if self.fixed else "exact"
            rank_term = improved_step.rank_penalty(theta, group["rank_penalty_strength"], form)
        res_dtype = host_scalar_dtype(dtype)
        res_weight = self._residual_weights(states, group, early, res_dtype, theta.device)
        mask_scale, jumps = self._mask_host_terms(states, group, t, theta.device)
        if not warm and mask_scale is None:  # E = M·1: one post-warm-up graph whether or not the lr fell
            mask_scale = torch.ones(len(params), dtype=torch.float32, device=theta.device)

        flags = S.Flags(
            ndim=ndim,
            dtype=dtype,
            fixed=self.fixed,
            came=group["came"],
            early=early,
            warm=warm,
            edge=group["edge_suppression"],
            spatial=group["spatial_awareness"],
            spatial_variance=self._has_stacked(stack, "spatial_variance"),
            background=group["background_regularization"],
        )
        consts = self._consts(group, early, rank_aware)
        beta1_t = 1.0 if early else max(group["betas"][0] * group["beta1_decay"] ** t, 0.4)
        decay = group["weight_decay"]
        if rank_aware:  # T25 (S2o), an fp32 value
            decay = float(rank_aware_decay_s2o(decay, theta[0]))
        scalars = torch.tensor([beta1_t, 1 - beta1_t, decay], dtype=res_dtype, device=theta.device)
        step = S.stack_step if self._uncompiled(dtype, early, stack) else S.fused_stack_step
        passed = step_states(st)
        ix = self._block_index(stack) if any(k.endswith("_q") for k in st) else None
        new_mask = step(
            stack.theta, stacked_grad, group_sum, self._floor, passed, scalars, rank_term, res_weight, mask_scale,
            jumps, ix, flags, consts
        )  # fmt: skip
        stack.take_rebound(passed)  # a state that changed dtype (stack_state.store)
        if warm:  # avg_lr: the per-tensor means of the new mask (before it is quantised, as the reference)
            stack.avg_lr = improved_step.rows(st["lr_mask"] if new_mask is None else new_mask).mean(1)
        sync = self.config.sync_frequency
        if sync and t % sync == 0:  # x ← D(Q(D(q) + e)), e ← 0
            keys = readable.QUANTIZED + readable.QUANTIZED_WITHOUT_MIXED_PRECISION
            minmax_codec.fold_errors(st, keys, ix)

    def _block_index(self, stack: ShapeStack) -> stack_blocks.BlockIndex:
        n, device = stack.theta[0].numel(), stack.theta.device
        key = (n, device)
        if key not in self._block_indices:
            self._block_indices[key] = stack_blocks.block_index(n, self.config.block_size, device)
        return self._block_indices[key]

    def _drop_stacked(self, stack: ShapeStack, key: str) -> None:
        """A state and its quantised parts, as the reference's `_drop`."""
        stack.drop(key)
        for part in minmax_codec.PARTS:
            stack.drop(f"{key}_{part}")

    def _uncompiled(self, dtype, early: bool, stack: ShapeStack) -> bool:
        """Upstream bf16 stacks run `stack_step` uncompiled: only the reference's own roundings after
        every op reproduce its numerics (see shape_stack.StackedSteps._uncompiled)."""
        return not self.fixed and dtype == torch.bfloat16

    def _consts(self, group, early, rank_aware) -> S.Consts:
        return S.Consts(
            eps1=group["eps"][0],
            eps2=group["eps"][1],
            clip=group["clip_threshold"],
            edge_threshold=group["edge_threshold"],
            edge_penalty=group["edge_penalty"],
            frequency_penalty=group["frequency_penalty"],
            emphasis=group["low_rank_emphasis"] if rank_aware else 1.0,
            beta3=EARLY_RESIDUAL_BETA if early else group["betas"][2],
            lr_bump=self._mask_setting(group, "lr_bump"),
            detail_preservation=group["detail_preservation"],
            min_lr=self._mask_setting(group, "min_lr"),
            max_lr=self._mask_setting(group, "max_lr"),
        )
