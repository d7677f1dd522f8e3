"""Compare reference.Automagic_CameAMP(compat="upstream") with the upstream class, step for step.

Usage: python -m tools.upstream_parity PATH/TO/library/automagic_cameamp.py [--steps 1000]

The upstream file (hinablue/sd-scripts @ 863c5b5) is not part of this repository; pass its path.
Its `torch.cuda.synchronize()` is stubbed on machines without CUDA [I-04].
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

import reference

SHAPES = [(16, 64), (64, 16), (33,), (4, 3, 3, 3), ()]


def load_upstream(path):
    spec = importlib.util.spec_from_file_location("upstream_automagic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(upstream, steps, seed, dtype, **kwargs):
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g, dtype=torch.float32).to(dtype) for s in SHAPES]
    # upstream's TAM raises on 0-d tensors (F.normalize dim=0); leave the scalar out of its run
    shapes = SHAPES if kwargs.get("warmup_steps", 500) < 2 else SHAPES[:-1]
    init = init[: len(shapes)]
    ours = [torch.nn.Parameter(x.clone()) for x in init]
    theirs = [torch.nn.Parameter(x.clone()) for x in init]
    opt_ours = reference.Automagic_CameAMP(ours, compat="upstream", **kwargs)
    opt_theirs = upstream.Automagic_CameAMP(theirs, **kwargs)
    worst = 0.0
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g).to(dtype) for p in ours]
        for a, b, gr in zip(ours, theirs, grads, strict=True):
            a.grad, b.grad = gr.clone(), gr.clone()
        opt_ours.step()
        opt_theirs.step()
        for a, b in zip(ours, theirs, strict=True):
            a, b = a.detach(), b.detach()
            scale = b.detach().abs().max().clamp(min=1e-30)
            worst = max(worst, float((a - b).abs().max() / scale))
    return worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    upstream = load_upstream(args.path)
    cases = [
        ("defaults", {}),
        ("warmup_steps=20", {"warmup_steps": 20}),
        ("warmup_steps=20, lr=1e-4, wd=1e-2", {"warmup_steps": 20, "lr": 1e-4, "weight_decay": 1e-2}),
        ("came=False, warmup_steps=20", {"warmup_steps": 20, "came": False}),
        ("full_finetune, clip=0.5", {"warmup_steps": 20, "full_finetune": True, "clip_threshold": 0.5}),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        for name, kw in cases:
            err = run(upstream, args.steps, seed=0, dtype=dtype, **kw)
            print(f"{dtype!s:15} {name:40} max |Δθ|/max|θ| over {args.steps} steps: {err:.3e}")


if __name__ == "__main__":
    main()
