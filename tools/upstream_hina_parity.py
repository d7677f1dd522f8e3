"""Compare reference.HinaAdamWOptimizer(compat="upstream") with upstream's, step for step.

Usage: python -m tools.upstream_hina_parity PATH/TO/library/custom_hina_adamw_optimizer.py [--steps 300]

The upstream file (hinablue/sd-scripts @ 9d42f8b) is not part of this repository. It subclasses
bitsandbytes' AdamW8bit, whose current constructor refuses its arguments [I-43], so it is loaded with
a stand-in base class that drops them (upstream overrides `step` and never uses the base's state), and
with its package-relative logging import replaced.
"""

from __future__ import annotations

import argparse
import types

import torch

from reference.hina_adamw import HinaAdamWOptimizer

SHAPES = {  # kohya-style names: a paired LoRA, an unpaired B, a LoKr pair, a conv LoRA, a plain weight
    "lora_unet_a.lora_down.weight": (4, 32), "lora_unet_a.lora_up.weight": (48, 4),
    "lora_unet_b.lora_up.weight": (16, 4), "lora_unet_c.lokr_w1": (4, 4), "lora_unet_c.lokr_w2": (8, 8),
    "lora_unet_d.lora_down.weight": (4, 8, 3, 3), "lora_unet_d.lora_up.weight": (8, 4, 1, 1),
    "bias": (33,),
}  # fmt: skip
CASES = [
    ("defaults", {}),
    ("lr=1e-2, wd=0.1, T=20 (dynamic WD active)", {"lr": 1e-2, "weight_decay": 0.1, "wd_transition_steps": 20}),
    ("orthogonal_grad, no grams (cautious acts)", {"use_orthogonal_grad": True, "use_grams": False}),
    ("plain Adam moments, no TAM, no AGR", {"use_adopt_stability": False, "use_tam": False, "use_agr": False}),
]


class _AdamW8bitStandIn(torch.optim.Optimizer):
    def __init__(self, params, lr, betas, eps, weight_decay, **_ignored):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})


def load_upstream(path):
    source = open(path, encoding="utf-8").read()
    source = source.replace("from .utils import setup_logging", "setup_logging = lambda: None")
    source = source.replace("from bitsandbytes.optim import AdamW8bit", "AdamW8bit = _AdamW8bitStandIn")
    module = types.ModuleType("upstream_hina")
    module._AdamW8bitStandIn = _AdamW8bitStandIn
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def run(upstream, steps, seed, dtype, **kwargs):
    g = torch.Generator().manual_seed(seed)
    init = {n: (torch.randn(s, generator=g) * 0.1).to(dtype) for n, s in SHAPES.items()}
    ours = {n: torch.nn.Parameter(x.clone()) for n, x in init.items()}
    theirs = {n: torch.nn.Parameter(x.clone()) for n, x in init.items()}
    names = list(SHAPES)
    opt_ours = HinaAdamWOptimizer([{"params": [ours[n] for n in names], "named": names}], compat="upstream", **kwargs)
    opt_theirs = upstream.HinaAdamWOptimizer([{"params": [theirs[n] for n in names], "named": names}], **kwargs)
    worst = 0.0
    for _ in range(steps):
        for n in names:
            grad = torch.randn(SHAPES[n], generator=g).to(dtype)
            ours[n].grad, theirs[n].grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
        for n in names:
            a, b = ours[n].detach().float(), theirs[n].detach().float()
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)))
    return worst


def rows(upstream, steps):
    return [
        (f"HinaAdamWOptimizer {str(dtype).replace('torch.', '')} {label}", run(upstream, steps, 0, dtype, **kw))
        for dtype in (torch.float32, torch.bfloat16)
        for label, kw in CASES
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    for tag, err in rows(load_upstream(args.path), args.steps):
        print(f"{tag:70} max |Δθ|/max|θ| over {args.steps} steps: {err:.3e}")


if __name__ == "__main__":
    main()
