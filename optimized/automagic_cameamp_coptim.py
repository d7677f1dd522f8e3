"""Fast Automagic_CameAMP_COptim and Automagic_CameAMP_COptim8bit (spec O4, O5 b).

The fused Automagic_CameAMP step with three C-Optim switches (automagic_step.Flags.contextual, `v2`):
CAME V2 scaling, the multi-scale momenta μ_k and their 1/k-weighted mean C as the momentum's input
(T17), and E·Λ·ef (T16.6, T16.7). The context module, the loss it learns from and its persistence are
the reference's (reference.automagic_cameamp_coptim.ContextualOptimization); Λ, the edge flag and the
μ_k update counters are host-side per-tensor numbers, passed to the kernels as one small table. The
8bit class stores the μ_k as blockwise 8-bit codes like the other states.

What differs from the reference beyond round-off: none known. In upstream mode with bf16 parameters
the reference rounds C to bf16 after each of its operations, and where m is a small difference of larger
terms that round-off is a large part of m (equivalence_tests/tolerances.py LOCKSTEP_BF16_MULTISCALE).
When a loss is given, the context's gradient signal is computed per tensor as in the reference
(upstream mode reads each norm back to the host, as upstream does).
"""

from __future__ import annotations

import numpy as np
import torch

from reference.automagic_cameamp_coptim import ContextualOptimization
from reference.config import COptimConfig
from reference.state_8bit import Blockwise8bitStates

from . import automagic_step as S
from .automagic_cameamp import Automagic_CameAMP
from .bucket import Bucket
from .shard_sums import ShardSums
from .tables import columns


class Automagic_CameAMP_COptim(ContextualOptimization, Automagic_CameAMP):
    """Fused Automagic_CameAMP_COptim. See reference.Automagic_CameAMP_COptim for the algorithm."""

    config_class = COptimConfig

    @property
    def _variant(self) -> dict:
        return {"v2": True, "fresh_residual": False, "store_post_mask": False}

    def _gradient_signal(self, params):
        """T16.2's signal; of FSDP2 shards (reference.sharding's local twins), from each tensor's Σg (fixed: the
        means) or Σg² (upstream: the norms) over every rank's rows, one all_reduce for all tensors."""
        if not any(hasattr(p, "_local_shard_of") for p in params):
            return super()._gradient_signal(params)
        has = [p.grad is not None for p in params]
        zero = torch.zeros((), dtype=torch.float64, device=params[0].device)
        sums = [p.grad.double().sum() if h else zero for p, h in zip(params, has, strict=True)]
        squares = [p.grad.double().square().sum() if h else zero for p, h in zip(params, has, strict=True)]
        shards = ShardSums(params, params[0].device)
        sums, squares = shards(torch.stack(sums), torch.stack(squares))
        has = torch.tensor(has, device=sums.device)
        if self.fixed:
            numels = shards.numel_t
            return torch.where(has & (numels > 0), sums / numels.clamp(min=1), 0.0).float()
        return (squares[has].sum() / has.sum()).sqrt().float().cpu()

    def _extra_states(self) -> dict:
        return {f"momentum_scale_{k}": 0 for k in self.momentum_scales}

    def _counters(self, b: Bucket):
        """Per-tensor host state: μ_k update counts [T, K], edge-case counts, the last Λ·ef."""
        T, K = len(b.params), len(self.momentum_scales)
        if "momentum_count" not in b.host:
            b.host["momentum_count"] = np.zeros((T, K), dtype=np.int64)
            b.host["edge_case_count"] = np.zeros(T, dtype=np.int64)
            b.host["contextual_lr_multiplier"] = np.ones(T, dtype=np.float64)
        return b.host["momentum_count"], b.host["edge_case_count"], b.host["contextual_lr_multiplier"]

    def _bucket_context(self, b: Bucket, group, t, active, multiplier, edge):
        counts, edge_count, factor = self._counters(b)
        scales = np.array(self.momentum_scales, dtype=np.int64)
        # T17: μ_k is updated where t mod k == 0; it is active (weight 1/k) once updated
        update = active[:, None] & (t[:, None] % scales[None, :] == 0)
        counts += update
        inv_k = np.where(counts > 0, 1.0 / scales[None, :], 0.0)
        total = np.zeros(len(t))
        for j in range(len(scales)):  # in the reference's order, as it sums
            total += inv_k[:, j]
        use_u = ~(counts > 0).any(axis=1)
        # T16.7: the edge factor and its counter; the product Λ·ef is kept as the reference's state
        if edge:
            edge_factor = self.c_optim.edge_factor()
            edge_count[active] += 1
        else:
            edge_factor = 1.0
            edge_count[active] = np.maximum(edge_count[active] - 1, 0)
        factor[active] = multiplier * edge_factor
        K = len(scales)
        table = [use_u, np.full(len(t), multiplier * edge_factor), np.where(use_u, 1.0, total)]
        table += [update[:, j] for j in range(K)] + [inv_k[:, j] for j in range(K)]
        cols = columns(table, b.device, torch.float32)
        states = tuple(b.states[name] for name in self._extra_states())
        return S.Context(states, *cols[:3], cols[3 : 3 + K], cols[3 + K :])

    # ------------------------------------------------------------------ persistence
    def _scalars(self, b: Bucket, i: int) -> dict:
        out = super()._scalars(b, i)
        counts, edge_count, factor = self._counters(b)
        out["edge_case_count"] = int(edge_count[i])
        out["contextual_lr_multiplier"] = float(factor[i])
        for j, k in enumerate(self.momentum_scales):
            out[f"momentum_count_{k}"] = int(counts[i, j])
        return out

    def _restart(self, b: Bucket, tensors=None):
        super()._restart(b, tensors)
        if tensors is None:
            for name in ("momentum_count", "edge_case_count", "contextual_lr_multiplier"):
                b.host.pop(name, None)
        elif "momentum_count" in b.host:
            counts, edge_count, factor = self._counters(b)
            counts[tensors], edge_count[tensors], factor[tensors] = 0, 0, 1.0

    def _import(self, b: Bucket, i: int, group, saved: dict):
        super()._import(b, i, group, saved)
        counts, edge_count, factor = self._counters(b)
        edge_count[i] = int(saved.get("edge_case_count", 0))
        factor[i] = float(saved.get("contextual_lr_multiplier", 1.0))
        for j, k in enumerate(self.momentum_scales):
            counts[i, j] = int(saved.get(f"momentum_count_{k}", 0))


class Automagic_CameAMP_COptim8bit(Blockwise8bitStates, Automagic_CameAMP_COptim):
    """Fused Automagic_CameAMP_COptim8bit (spec O5 b): COptim's numerics with m, v, r, s, the LR mask, the
    μ_k and ALLoRA's ρ stored as blockwise 8-bit codes."""

    quantized_states = True
