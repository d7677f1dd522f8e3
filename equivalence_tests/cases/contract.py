"""torch.optim contract cases: every class of both packages, built and warmed the same way."""

from __future__ import annotations

import warnings

import torch

import optimized
import reference

from ..differential import CLASSES

PACKAGES = [reference, optimized]


WARMED = {name: ({} if name == "HinaAdamWOptimizer" else {"warmup_steps": 4}) for name in CLASSES}


def named_params() -> list[tuple[str, torch.nn.Parameter]]:
    """A LoRA pair (HinaAdamW and the Improved classes treat them by name), a matrix and a vector."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"unet.a.lora_down.weight": (2, 6), "unet.a.lora_up.weight": (5, 2), "unet.b.weight": (4, 6),
              "unet.b.bias": (4,)}  # fmt: skip
    return [(n, torch.nn.Parameter(torch.randn(s, generator=gen))) for n, s in shapes.items()]


def build(package, name, compat):
    named = named_params()
    group = {"params": [p for _, p in named], "param_names": [n for n, _ in named]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(package, name)([group], compat=compat, **WARMED[name])


def params_of(opt) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def run(opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params_of(opt):
            p.grad = torch.randn(p.shape, generator=gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
