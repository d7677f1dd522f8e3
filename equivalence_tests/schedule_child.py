"""Run by test_scheduled_hyperparameters.py in a fresh process: every fast class under torch's OneCycleLR, which
moves lr and β1 at every step (`cycle_momentum`, its default and CyclicLR's, writes group["betas"] = (β1, *rest)).
torch.compile runs with dynamo's "eager" backend here: dynamo's guards, which
decide whether a call compiles a new graph, are the same as inductor's, and nothing is generated or built.

Prints one JSON object: {"<class> <compat>": [graphs after every phase was stepped, graphs after the moving
steps, the parameters' scaled error against the reference under the same schedule]}.
"""

from __future__ import annotations

import json
import warnings

import torch
import torch._dynamo.utils

import optimized
import reference

from .differential import CLASSES, COMPATS
from .tolerances import scaled_error

WARMUP = 4  # t < W/2, W/2 ≤ t < W and t ≥ W are all stepped by step WARMUP + 1
SETTLE = WARMUP + 2  # steps after which every graph of the run is compiled
MOVING = 4  # steps after that, each at a new lr and β1


def eager_backend(compile_):
    """torch.compile with the "eager" backend (inductor's options dropped)."""

    def compile_eager(fn, options=None, **kwargs):
        return compile_(fn, **{**kwargs, "backend": "eager"})

    return compile_eager


def make_params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = ((16, 8), (16,), (4, 16), (4,))
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.5) for s in shapes]


def build(package, name: str, compat: str, params):
    kwargs = {"lr": 1e-3, "compat": compat}
    if name != "HinaAdamWOptimizer":
        kwargs["warmup_steps"] = WARMUP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(package, name)(params, **kwargs)


def run(package, name: str, compat: str, graphs: list | None = None) -> list[torch.nn.Parameter]:
    params = make_params(0)
    opt = build(package, name, compat, params)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=SETTLE + MOVING + 1)
    gen = torch.Generator().manual_seed(1)
    for t in range(SETTLE + MOVING):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        scheduler.step()
        if graphs is not None and t in (SETTLE - 1, SETTLE + MOVING - 1):
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return params


def main() -> None:
    torch.compile = eager_backend(torch.compile)
    out = {}
    for name in CLASSES:
        for compat in COMPATS:
            graphs: list = []
            fast = run(optimized, name, compat, graphs)
            slow = run(reference, name, compat)
            error = max(scaled_error(a.detach(), b.detach()) for a, b in zip(slow, fast, strict=True))
            out[f"{name} {compat}"] = [*graphs, error]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
