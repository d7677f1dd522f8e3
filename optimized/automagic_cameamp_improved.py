"""Fast Automagic_CameAMP_Improved: same name, kwargs, compat modes, state and state_dict as
reference.Automagic_CameAMP_Improved, stepped a stack of same-shape tensors at a time (optimized.shape_stack):
`improved_step.stack_step`, compiled, runs once per stack.
"""

from __future__ import annotations

import torch

from reference import automagic_cameamp_improved as readable
from reference import lr_mask
from reference.dual_momentum import default_alpha
from reference.low_rank_penalty import rank_aware_decay

from . import improved_step as S
from .shape_stack import ShapeStack, StackedSteps, host_scalar_dtype, step_states, steps_in_passes


class Automagic_CameAMP_Improved(StackedSteps, readable.Automagic_CameAMP_Improved):
    """Stacked-tensor Automagic_CameAMP_Improved. See reference.Automagic_CameAMP_Improved for the algorithm."""

    def _step_stack(self, stack: ShapeStack, stacked_grad, group, group_sum):
        """Host bookkeeping (step counts, states that start or end, per-tensor host scalars), the rank
        penalty, then `improved_step.fused_stack_step`."""
        params, st = stack.params, stack.states
        ndim = params[0].dim()
        states, t, early, warm, dtype, theta = self._open_stack(stack, group)

        if early and "s" not in st:
            shape = (len(params),) if self.fixed else stack.theta.shape
            stack.set("s", torch.zeros(shape, dtype=dtype, device=theta.device))
        if early and group["edge_suppression"] and "edge_history" not in st:
            stack.set("edge_history", torch.zeros(theta.shape, dtype=dtype, device=theta.device))
        if warm and "pre" not in st:
            stack.set("pre", theta.clone())
        if warm and "last_polarity" not in st:
            stack.set("last_polarity", torch.zeros(theta.shape, dtype=torch.bool, device=theta.device))

        rank_aware = group["lora_rank_penalty"] and ndim == 2
        rank_term = None
        if rank_aware:  # T24, batched eigh/SVD outside the fused graph
            form = "fixed" if self.fixed else ("approximate" if self.config.use_approximate_svd else "exact")
            rank_term = S.rank_penalty(theta, group["rank_penalty_strength"], form)
        res_dtype = host_scalar_dtype(dtype)
        res_weight = self._residual_weights(states, group, early, res_dtype, theta.device)
        mask_scale, jumps = self._mask_host_terms(states, group, t, theta.device)

        flags = S.Flags(
            ndim=ndim,
            fixed=self.fixed,
            came=group["came"],
            dual=group["enable_dual_momentum"],
            early=early,
            warm=warm,
            d_coef_phase=t < group["warmup_steps"] / 2,
            edge=group["edge_suppression"],
            spatial=group["spatial_awareness"],
            spatial_variance="spatial_variance" in st,
            background=group["background_regularization"],
        )
        consts = self._consts(group, early, rank_aware)
        beta1_t = 1.0 if early else max(group["betas"][0] * consts.beta1_decay**t, 0.4)
        decay = rank_aware_decay(group["weight_decay"], theta) if rank_aware else group["weight_decay"]
        scalars = torch.tensor([beta1_t, 1 - beta1_t, decay, consts.beta1, consts.mix], dtype=res_dtype,
                               device=theta.device)  # fmt: skip
        uncompiled = self._uncompiled(dtype, early, stack)
        if not uncompiled:  # the fields a scheduler moves are inputs of the graph (S.Consts)
            consts = consts._replace(beta1=scalars[S.BETA1], mix=scalars[S.MIX])
        args = (stack.theta, stacked_grad, group_sum, self._floor, step_states(st), scalars, rank_term, res_weight,
                mask_scale, jumps, flags, consts)  # fmt: skip
        if uncompiled:
            S.stack_step(*args)
        elif steps_in_passes(stack, early):
            S.in_passes(S.fused_stack_step, *args)
        else:
            S.fused_stack_step(*args)
        if warm:  # the per-tensor means of the new mask, taken by ATen as the reference takes them (inductor's
            # sum of a row of 12,000 elements under dynamic shapes was 4e-6 off)
            stack.avg_lr = S.rows(st["lr_mask"]).mean(1)

    def _residual_weights(self, states, group, early: bool, dtype, device):
        """[I-21] fixed: each tensor's Σ of the residual EMA's weights, advanced one step, as a [c] tensor
        (None upstream)."""
        if not self.fixed:
            return None
        beta3 = readable.EARLY_RESIDUAL_BETA if early else group["betas"][2]
        for state in states:
            state["exp_avg_res_weight"] = beta3 * state["exp_avg_res_weight"] + (1.0 - beta3)
        return torch.tensor([s["exp_avg_res_weight"] for s in states], dtype=dtype, device=device)

    def _consts(self, group, early, rank_aware) -> S.Consts:
        beta1, beta2, beta3 = group["betas"]
        mix = group["alpha_mix_ratio"]
        beta1_decay = group["beta1_decay"] if self.fixed else self.config.beta1_decay
        return S.Consts(
            eps1=group["eps"][0],
            eps2=group["eps"][1],
            clip=group["clip_threshold"],
            edge_threshold=group["edge_threshold"],
            edge_penalty=group["edge_penalty"],
            frequency_penalty=group["frequency_penalty"],
            beta1=beta1,
            beta2=beta2,
            long_term_beta=group["long_term_beta"],
            mix=default_alpha(beta1, group["long_term_beta"]) if mix is None else mix,
            beta1_decay=beta1_decay,
            emphasis=group["low_rank_emphasis"] if rank_aware else 1.0,
            beta3=readable.EARLY_RESIDUAL_BETA if early else beta3,
            lr_bump=self._mask_setting(group, "lr_bump"),
            d_coef=group["d_coef"],
            detail_preservation=group["detail_preservation"],
            min_lr=self._mask_setting(group, "min_lr"),
            max_lr=self._mask_setting(group, "max_lr"),
        )

    def _mask_host_terms(self, states, group, t, device):
        """_lr_mask's host part per tensor (T8c): lr_max moves, and returns (the post-warm-up scale [c] or
        None where all are 1, the warm-up lr jumps [c] or None after W), fp32 as the mask is."""
        lr = group["lr"]
        if t >= group["warmup_steps"]:
            for state in states:
                state["lr_max"] = max(state["lr_max"], lr)
            if self.fixed:  # lr_mask.post_warmup_lr_mask: E = M·max(η/lr_max, 0.1), not stored
                floor = lr_mask.POST_WARMUP_MIN_SCALE
                scale = [max(lr / state["lr_max"], floor) if lr < state["lr_max"] else 1.0 for state in states]
            else:  # stored: compounding [I-10]
                scale = [lr / state["lr_max"] for state in states]
            if all(s == 1.0 for s in scale):
                return None, None
            return torch.tensor(scale, dtype=torch.float32, device=device), None
        jumps = [max(lr - state["lr_max"], 0.0) for state in states]
        for state in states:
            state["lr_max"] = max(state["lr_max"], lr)
        return None, torch.tensor(jumps, dtype=torch.float32, device=device)
