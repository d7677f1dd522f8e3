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
# # Automagic_CameAMP_8Bit (seed 004) — block min/max 8-bit states with error feedback (optimizers.md O8, T18)
# Left: round-trip error of the min/max codec by block size, for Gaussian data with one outlier per
# 4096 elements: smaller blocks confine the outlier's range. The dashed line is the bound s_b/2.
# Middle: an EMA kept 8-bit each step, with and without error feedback: without it the stored EMA
# stalls when its update is below one quantisation step; with it the residual is carried forward.
# Right: a LoRA-like fit with states in fp32 (quantize_states=False, = S2o numerics) and 8-bit
# (block 64 / 256, with error feedback), and the state memory each reports.

# %%
import matplotlib.pyplot as plt
import torch

import reference
from reference import minmax_8bit

gen = torch.Generator().manual_seed(0)
x = torch.randn(1 << 16, generator=gen)
x[::4096] = 40.0
sizes = [64, 128, 256, 512, 1024, 2048, 4096]
errors, bounds = [], []
for b in sizes:
    q, s, z = minmax_8bit.quantize(x, b)
    errors.append(float((minmax_8bit.dequantize(q, s, z, b) - x).abs().mean()))
    bounds.append(float(minmax_8bit.error_bound(s).mean()))

drift = {}
for feedback in (False, True):
    stored, exact, error, trace = torch.zeros(4096), torch.zeros(4096), (torch.zeros(4096) if feedback else None), []
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        sample = torch.randn(4096, generator=g) + 0.5
        exact = 0.99 * exact + 0.01 * sample
        q, s, z, error = minmax_8bit.store_with_feedback(0.99 * stored + 0.01 * sample, error, 256)
        stored = minmax_8bit.dequantize(q, s, z, 256)
        trace.append(float((stored - exact).abs().mean()))
    drift[feedback] = trace


def fit(**kwargs):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(64, 4, generator=g) @ torch.randn(4, 48, generator=g)
    a = torch.nn.Parameter(torch.randn(4, 48, generator=g) * 0.1)
    b = torch.nn.Parameter(torch.zeros(64, 4))
    opt = reference.Automagic_CameAMP_8Bit([a, b], lr=1e-3, warmup_steps=100, **kwargs)
    losses = []
    for _ in range(250):
        loss = ((b @ a - target) ** 2).mean()
        a.grad, b.grad = (t.detach() for t in torch.autograd.grad(loss, [a, b]))
        opt.step()
        losses.append(float(loss.detach()))
    return losses, opt.get_memory_stats()


runs = {"fp32 states": fit(quantize_states=False), "8-bit, block 64": fit(block_size=64),
        "8-bit, block 256": fit(block_size=256)}  # fmt: skip

fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
ax[0].plot(sizes, errors, "o-", label="mean |x̂ − x|")
ax[0].plot(sizes, bounds, "--", label="mean bound s/2")
ax[0].set(xscale="log", yscale="log", xlabel="block size", title="min/max codec error")
ax[0].legend()
for feedback, trace in drift.items():
    ax[1].plot(trace, label="error feedback" if feedback else "plain")
ax[1].set(yscale="log", xlabel="step", ylabel="mean |stored − exact|", title="8-bit EMA drift")
ax[1].legend()
for label, (losses, stats) in runs.items():
    ax[2].plot(losses, label=f"{label} (ratio {stats['compression_ratio']:.2f})")
ax[2].set(yscale="log", xlabel="step", ylabel="loss", title="rank-4 LoRA fit")
ax[2].legend()
plt.tight_layout()
assert errors == sorted(errors) and all(e <= b for e, b in zip(errors, bounds, strict=True))
assert drift[True][-1] < 0.5 * drift[False][-1]
assert all(losses[-1] < losses[0] for losses, _ in runs.values())
