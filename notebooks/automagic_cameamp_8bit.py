# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Automagic_CameAMP8bit — blockwise 8-bit states (optimizers.md O2, techniques.md T19a)
# Left: the round-trip error of bitsandbytes' blockwise dynamic code against block size, on an
# Adam-like second moment (positive, spanning decades). Right: the same noisy quadratic trained by the
# fp32 class and the 8-bit class, in upstream mode and in fixed mode. Upstream's 8-bit class diverges: it
# never re-quantises the residual r, so every step divides by √((1−β3)·res), a step ~30× too large [I-08].

# %%
import bitsandbytes.functional as bnb_functional
import matplotlib.pyplot as plt
import torch

import reference
from reference import blockwise_8bit

gen = torch.Generator().manual_seed(0)
v = torch.randn(1 << 16, generator=gen).pow(2) * torch.logspace(-6, 0, 1 << 16)
sizes = [64, 128, 256, 512, 1024, 2048, 4096]
errors = []
for b in sizes:
    codes, absmax = blockwise_8bit.quantize(v, blocksize=b)
    errors.append(float(((blockwise_8bit.dequantize(codes, absmax, blocksize=b) - v).abs() / v.abs().max()).max()))
codes, state = bnb_functional.quantize_blockwise(v, blocksize=4096)
assert torch.equal(blockwise_8bit.dequantize(codes, state.absmax), bnb_functional.dequantize_blockwise(codes, state))
assert errors[0] <= errors[-1]  # smaller blocks: a tighter absmax, a smaller error


def train(cls, compat, steps=120):
    g = torch.Generator().manual_seed(1)
    target = torch.randn(64, 96, generator=g)
    w = torch.nn.Parameter(torch.zeros(64, 96))
    opt = cls([w], lr=1e-3, warmup_steps=40, compat=compat)
    losses = []
    for _ in range(steps):
        w.grad = 2 * (w.detach() - target) / w.numel() + 1e-4 * torch.randn(w.shape, generator=g)
        opt.step()
        losses.append(float(((w.detach() - target) ** 2).mean()))
    return losses


fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
ax[0].loglog(sizes, errors, "o-")
ax[0].set(xlabel="block size", ylabel="max |x̂ − x| / max |x|", title="8-bit round-trip error")
curves = {}
for compat in ("upstream", "fixed"):
    for cls, style in ((reference.Automagic_CameAMP, "-"), (reference.Automagic_CameAMP8bit, "--")):
        curves[(cls.__name__, compat)] = train(cls, compat)
        ax[1].plot(curves[(cls.__name__, compat)], style, label=f"{cls.__name__} {compat}")
ax[1].set(xlabel="step", ylabel="loss", yscale="log", title="noisy quadratic")
ax[1].legend(fontsize=7)
plt.tight_layout()
assert curves[("Automagic_CameAMP8bit", "upstream")][-1] > 10 * curves[("Automagic_CameAMP8bit", "upstream")][0]
assert all(c[-1] < c[0] for key, c in curves.items() if key != ("Automagic_CameAMP8bit", "upstream"))
