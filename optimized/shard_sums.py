"""The per-tensor sums of a bucket whose tensors are FSDP2 shards, summed across the mesh.

Under FSDP2 the fast Automagic_CameAMP and C-Optim step each rank's own rows (reference.sharding: local twins).
Every statistic of their step that is not per element is a sum (AGR's group Σ|g|, adaptive weight decay's Σ|g| and
Σg², the RMS clip's Σu², TAM's and OrthoGrad's inner products, upstream TAM's dim-0 column norms, the LR mask's
mean, C-Optim's gradient signal),
so each is this rank's partial sum all-reduced over the mesh: one collective per reduction for all of a bucket's
tensors, never one per tensor. A tensor stepped whole on every rank (one with an empty shard somewhere) keeps
its own sum. Counts are the whole tensors' (`numel_t`). A total beyond float32's range is ±inf, as the
single-process float32 sum is (kernels.tensor_sum), except in a float64 bucket.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from .kernels import in_fp32_range


def over_ranks(shards: ShardSums | None, *sums: torch.Tensor) -> list[torch.Tensor]:
    """Per-tensor sums of the whole tensors: summed over the ranks by `shards`, or as they are where it is None
    (one process, or tensors stepped whole)."""
    return list(sums) if shards is None else shards(*sums)


class ShardSums:
    def __init__(self, params, device):
        owners = [getattr(p, "_local_shard_of", None) for p in params]
        groups = {id(o.device_mesh.get_group()): o.device_mesh.get_group() for o in owners if o is not None}
        if len(groups) != 1:
            raise ValueError("the FSDP2 parameters of one param group and dtype must share one device mesh")
        self.group = next(iter(groups.values()))
        self.sharded = torch.tensor([o is not None for o in owners], device=device)
        self.numels = np.array([math.prod((p if o is None else o).shape) for p, o in zip(params, owners, strict=True)])
        self.numel_t = torch.tensor(self.numels, dtype=torch.float64, device=device)
        self.fp32_sums = params[0].dtype != torch.float64

    @staticmethod
    def of(params, device) -> ShardSums | None:
        """The bucket's ShardSums, or None where no tensor is a local shard (the single-process case)."""
        return ShardSums(params, device) if any(hasattr(p, "_local_shard_of") for p in params) else None

    def __call__(self, *sums: torch.Tensor) -> list[torch.Tensor]:
        """Each [T] (or [T, …]) sum of this rank's rows, as the sum over the whole tensors, in one all_reduce."""
        return self.pieces([(0, s) for s in sums])

    def pieces(self, parts: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        """As `__call__`, for (first, sums) whose dim 0 runs over tensors first, first + 1, … (a shape class)."""
        flat = torch.cat([x.double().reshape(-1) for _, x in parts])
        shard = torch.cat([self.sharded[i : i + x.shape[0]].repeat_interleave(x[0].numel()) for i, x in parts])
        total = torch.where(shard, flat, 0.0)
        dist.all_reduce(total, group=self.group)
        total = torch.where(shard, total, flat)
        if self.fp32_sums:
            total = in_fp32_range(total)
        out, start = [], 0
        for _, x in parts:
            out.append(total[start : start + x.numel()].view(x.shape).to(x.dtype))
            start += x.numel()
        return out

    def all(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank."""
        value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.numel_t.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return bool(value.item())
