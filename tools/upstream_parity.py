"""Compare the reference classes (compat="upstream") with upstream's, step for step.

Usage: python -m tools.upstream_parity PATH/TO/library/automagic_cameamp.py [--steps 1000]

The upstream file (hinablue/sd-scripts @ 863c5b5) is not part of this repository; pass its path.
Its `torch.cuda.synchronize()` is stubbed on machines without CUDA [I-04]. Classes compared:
Automagic_CameAMP, Automagic_CameAMP8bit (fp32 only: upstream's OrthoGrad raises on bf16 parameters,
because its 8-bit update is fp32) and Automagic_CameAMP_COptim (without a loss, with a falling loss and
with a noisy loss that makes the context report edge cases).
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from reference.automagic_cameamp import Automagic_CameAMP
from reference.automagic_cameamp_8bit import Automagic_CameAMP8bit
from reference.automagic_cameamp_coptim import Automagic_CameAMP_COptim

SHAPES = [(16, 64), (64, 16), (33,), (4, 3, 3, 3), (5000,), ()]
OURS = {
    "Automagic_CameAMP": Automagic_CameAMP,
    "Automagic_CameAMP8bit": Automagic_CameAMP8bit,
    "Automagic_CameAMP_COptim": Automagic_CameAMP_COptim,
}
CASES = [
    ("defaults", {}),
    ("warmup_steps=20", {"warmup_steps": 20}),
    ("warmup_steps=20, lr=1e-4, wd=1e-2", {"warmup_steps": 20, "lr": 1e-4, "weight_decay": 1e-2}),
    ("came=False, warmup_steps=20", {"warmup_steps": 20, "came": False}),
    ("full_finetune, clip=0.5", {"warmup_steps": 20, "full_finetune": True, "clip_threshold": 0.5}),
]
LOSSES = ("none", "falling", "noisy")  # what a closure gives the C-Optim context


def load_upstream(path):
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    spec = importlib.util.spec_from_file_location("upstream_automagic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(
    upstream,
    steps,
    seed,
    dtype,
    name="Automagic_CameAMP",
    losses="none",
    classes=None,
    shapes=None,
    ours_kwargs=None,
    upstream_name=None,
    **kwargs,
):
    """Worst max|Δθ|/max|θ| over all steps and tensors. `classes[name]` (default OURS) runs with
    `ours_kwargs` added, against upstream's `upstream_name` (default `name`)."""
    g = torch.Generator().manual_seed(seed)
    if shapes is None:
        # upstream's TAM raises on 0-d tensors (F.normalize dim=0); leave the scalar out of its run
        shapes = SHAPES if kwargs.get("warmup_steps", 500) < 2 else SHAPES[:-1]
    init = [torch.randn(s, generator=g, dtype=torch.float32).to(dtype) for s in shapes]
    ours = [torch.nn.Parameter(x.clone()) for x in init]
    theirs = [torch.nn.Parameter(x.clone()) for x in init]
    opt_ours = (classes or OURS)[name](ours, compat="upstream", **kwargs, **(ours_kwargs or {}))
    opt_theirs = getattr(upstream, upstream_name or name)(theirs, **kwargs)
    worst = 0.0
    for i in range(steps):
        grads = [torch.randn(p.shape, generator=g).to(dtype) for p in ours]
        for a, b, gr in zip(ours, theirs, grads, strict=True):
            a.grad, b.grad = gr.clone(), gr.clone()
        noise = float(torch.rand((), generator=g))
        loss = {"none": None, "falling": 1.0 / (1 + i) + 0.05 * noise, "noisy": 0.01 + noise}[losses]
        closure = None if loss is None else (lambda loss=loss: torch.tensor(loss))
        opt_ours.step(closure)
        opt_theirs.step(closure)
        for a, b in zip(ours, theirs, strict=True):
            scale = b.detach().float().abs().max().clamp(min=1e-30)
            err = float((a.detach().float() - b.detach().float()).abs().max() / scale)
            worst = max(worst, err if err == err else float("inf"))  # NaN on either side counts as a failure
    return worst


def rows(upstream, steps):
    """(label, worst error) for every class × case × dtype that upstream can run."""
    out = []
    for name in OURS:
        dtypes = (torch.float32,) if name == "Automagic_CameAMP8bit" else (torch.float32, torch.bfloat16)
        for dtype in dtypes:
            for label, kw in CASES:
                for losses in LOSSES if name == "Automagic_CameAMP_COptim" else ("none",):
                    tag = f"{name} {str(dtype).replace('torch.', '')} {label}, loss: {losses}"
                    out.append((tag, run(upstream, steps, 0, dtype, name, losses, **kw)))
    return out


def case_rows(upstream, steps, label, cases, bf16_off, **run_kwargs):
    """(label dtype case, worst error) for every case in fp32 and bf16; bf16 runs add the `bf16_off` kwargs
    (the settings upstream cannot run in bf16 on CPU)."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for case, kw in cases:
            if dtype == torch.bfloat16:
                kw = {**kw, **bf16_off}
            tag = f"{label} {str(dtype).replace('torch.', '')} {case}"
            out.append((tag, run(upstream, steps, 0, dtype, **run_kwargs, **kw)))
    return out


def cli(rows_of, default_steps: int, width: int = 85):
    """`python -m tools.<tool> PATH [--steps N]`: print one line per row of `rows_of(upstream, steps)`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--steps", type=int, default=default_steps)
    args = parser.parse_args()
    for tag, err in rows_of(load_upstream(args.path), args.steps):
        print(f"{tag:{width}} max |Δθ|/max|θ| over {args.steps} steps: {err:.3e}")


if __name__ == "__main__":
    cli(rows, 1000)
