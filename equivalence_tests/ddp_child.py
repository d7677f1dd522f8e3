"""One rank of the DDP equivalence test (test_ddp.py), started by torchrun with gloo on the CPU.

For every class of both packages, both modes and each DDP setting, it trains a small MLP under
DistributedDataParallel and, beside it in the same process, the single-process run on the same global batch:
one model, every rank's micro-batches, the gradient DDP defines (each rank's accumulated gradient over its
micro-batches, averaged over the ranks). Halving is exact in floating point and a sum of two values does not
depend on their order, so the two runs must agree bit for bit. Writes {case: [worst |Δθ| against the single
process, worst |Δθ| against rank 0]} to DIR/rank{r}.pt. Usage: torchrun ... -m equivalence_tests.ddp_child DIR"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import optimized
import reference

from .cases.contract import WARMED
from .differential import CLASSES, COMPATS

STEPS = 10  # ≥ 2·W with the warm-up window W = 4 of cases.contract.WARMED
BATCH = 4  # per rank and micro-batch
# (gradient_as_bucket_view, micro-batches per step: the first ones under no_sync)
SETTINGS = ((False, 1), (True, 1), (True, 2))


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batch(step: int, rank: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return torch.randn(BATCH, 6, generator=gen), torch.randn(BATCH, 3, generator=gen)


def loss_of(model, data) -> torch.Tensor:
    x, y = data
    return (model(x) - y).pow(2).mean()


def make_optimizer(package, name, params, compat):
    return getattr(package, name)(params, lr=1e-2, compat=compat, **WARMED[name])


def train_ddp(package, name, compat, bucket_view: bool, micro: int, rank: int) -> list[torch.Tensor]:
    model = DistributedDataParallel(make_model(), gradient_as_bucket_view=bucket_view)
    opt = make_optimizer(package, name, model.parameters(), compat)
    for step in range(STEPS):
        opt.zero_grad()
        for m in range(micro - 1):
            with model.no_sync():
                loss_of(model, batch(step, rank, m)).backward()
        loss_of(model, batch(step, rank, micro - 1)).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def train_single(package, name, compat, micro: int, world: int) -> list[torch.Tensor]:
    model = make_model()
    params = list(model.parameters())
    opt = make_optimizer(package, name, params, compat)
    for step in range(STEPS):
        total = [torch.zeros_like(p) for p in params]
        for rank in range(world):
            model.zero_grad()
            for m in range(micro):
                loss_of(model, batch(step, rank, m)).backward()
            for t, p in zip(total, params, strict=True):
                t.add_(p.grad / world)
        for t, p in zip(total, params, strict=True):
            p.grad = t
        opt.step()
    return [p.detach().clone() for p in params]


def worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def main(directory: str) -> None:
    torch.set_num_threads(1)  # the same kernels, hence the same rounding, in both runs
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    warnings.simplefilter("ignore")  # the family's warm-up and clamp warnings, once per optimizer
    results = {}
    for package in (reference, optimized):
        for name in CLASSES:
            for compat in COMPATS:
                for bucket_view, micro in SETTINGS:
                    ddp = train_ddp(package, name, compat, bucket_view, micro, rank)
                    single = train_single(package, name, compat, micro, world)
                    first = [t.clone() for t in ddp]
                    for t in first:
                        dist.broadcast(t, 0)
                    case = f"{package.__name__}.{name} {compat} bucket_view={bucket_view} micro={micro}"
                    results[case] = [worst(ddp, single), worst(ddp, first)]
    torch.save(results, Path(directory) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
