"""The per-tensor sums of a bucket whose tensors are FSDP2 shards, summed across the mesh.

Under FSDP2 the fast Automagic_CameAMP, C-Optim, their 8-bit classes and HinaAdamW step each rank's own rows
(reference.sharding: local twins). Every statistic of their step that is not per element is a sum (AGR's group
Σ|g|, adaptive weight decay's Σ|g| and Σg², the RMS clip's Σu², TAM's and OrthoGrad's inner products, upstream
TAM's dim-0 column norms, the LR mask's mean, C-Optim's gradient signal, HinaAdamW's gradient, TAM and SPD sums),
so each is this rank's partial sum all-reduced over the mesh: one collective per reduction for all of a bucket's
tensors, never one per tensor. The one maximum is the scale of an 8-bit ALLoRA ρ block two ranks share
(`block_max`). A tensor stepped whole on every rank (one with an empty shard somewhere) keeps
its own sum. Counts are the whole tensors' (`numel_t`). A total beyond float32's range is ±inf, as the
single-process float32 sum is (kernels.tensor_sum), except in a float64 bucket.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from reference.blockwise_8bit import BLOCKSIZE
from reference.sharding import own_rows

from .codec import BlockLayout, block_range
from .kernels import in_fp32_range
from .layout import Layout


def over_ranks(shards: ShardSums | None, *sums: torch.Tensor) -> list[torch.Tensor]:
    """Per-tensor sums of the whole tensors: summed over the ranks by `shards`, or as they are where it is None
    (one process, or tensors stepped whole)."""
    return list(sums) if shards is None else shards(*sums)


def on_every_rank(buckets, flag: bool) -> bool:
    """`flag` held on every rank, where a bucket of `buckets` holds FSDP2 shards (one collective), else `flag`: a
    decision taken from this rank's gradients alone (the non-finite check's exact fallback) is then the same on
    every rank."""
    shards = next((b.shard_sums for b in buckets if b.shard_sums is not None), None)
    return flag if shards is None else shards.all(flag)


class ShardSums:
    def __init__(self, params, device):
        owners = [getattr(p, "_local_shard_of", None) for p in params]
        groups = {id(o.device_mesh.get_group()): o.device_mesh.get_group() for o in owners if o is not None}
        if len(groups) != 1:
            raise ValueError("the FSDP2 parameters of one param group and dtype must share one device mesh")
        self.group = next(iter(groups.values()))
        self.is_shard = [o is not None for o in owners]
        self.sharded = torch.tensor(self.is_shard, device=device)
        wholes = [p if o is None else o for p, o in zip(params, owners, strict=True)]
        self.numels = np.array([math.prod(w.shape) for w in wholes])
        self.first_rows = [0 if o is None else own_rows(o)[0] for o in owners]  # in the whole tensor
        self.whole_rows = [w.shape[0] if w.dim() else 1 for w in wholes]
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

    def block_max(self, blocks: BlockLayout, layout: Layout) -> Callable | None:
        """For ALLoRA's ρ table of an 8-bit bucket (blocks of 4096 rows, `codec.build_row_blocks` given
        `first_rows`): a function absmax → each block's absmax over every rank that holds rows of it, in one
        all_reduce (MAX), so ρ is quantised as one process quantises it; None where no matrix is a shard."""
        place, total = torch.full_like(blocks.blocks.block_tensor, -1), 0  # each block's among the whole tensors'
        for i, matrix in enumerate(layout.is_matrix):
            if not (matrix and self.is_shard[i]):
                continue
            held = block_range(blocks, i, layout.shapes[i][0])
            first = total + self.first_rows[i] // BLOCKSIZE
            place[held] = torch.arange(first, first + held.stop - held.start, device=place.device)
            total += -(-self.whole_rows[i] // BLOCKSIZE)
        if not total:
            return None
        shared = place >= 0
        place = torch.where(shared, place, total)  # the others to a slot of their own, never read

        def over_ranks(absmax: torch.Tensor) -> torch.Tensor:
            whole = absmax.new_zeros(total + 1).scatter_reduce_(0, place, absmax, "amax")
            dist.all_reduce(whole, op=dist.ReduceOp.MAX, group=self.group)
            return torch.where(shared, whole[place], absmax)

        return over_ranks

    def all(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank."""
        value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.numel_t.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return bool(value.item())
