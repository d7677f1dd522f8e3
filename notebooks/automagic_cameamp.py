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
# # Automagic_CameAMP — the composite optimizer (optimizers.md O1)
# Phases on a toy problem (a noisy quadratic, W = 60): t = 1 only seeds the second moment; t < W/2 uses TAM,
# OrthoGrad and adaptive weight decay; W/2 ≤ t < W consistency momentum; t ≥ W the mask is frozen.
# Upstream vs fixed mode, and the fast path beside the reference (they overlap).

# %%
import matplotlib.pyplot as plt
import torch

import optimized
import reference

W = 60


def run(cls, compat, steps=150):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(32, 16, generator=gen)
    w = torch.nn.Parameter(torch.zeros(32, 16))
    opt = cls([w], lr=1e-3, warmup_steps=W, compat=compat)
    losses, mask_means = [], []
    for _ in range(steps):
        loss = ((w - target) ** 2).mean()
        w.grad = 2 * (w.detach() - target) / w.numel() + 1e-3 * torch.randn(w.shape, generator=gen)
        opt.step()
        losses.append(float(loss))
        mask_means.append(float(opt.state_dict()["state"][0]["lr_mask"].mean()))
    return losses, mask_means


fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
results = {}
for compat in ("upstream", "fixed"):
    for cls, style in ((reference.Automagic_CameAMP, "-"), (optimized.Automagic_CameAMP, "--")):
        losses, masks = run(cls, compat)
        results[(compat, cls.__module__)] = losses
        ax[0].semilogy(losses, style, label=f"{compat} ({cls.__module__.split('.')[0]})")
        ax[1].plot(masks, style, label=f"{compat} ({cls.__module__.split('.')[0]})")
for a in ax:
    for x in (1, W / 2, W):
        a.axvline(x, color="grey", ls=":")
ax[0].set_title("loss; dotted: t = 1, W/2, W")
ax[1].set_title("mean LR mask")
ax[0].legend(fontsize=7)
plt.show()
# %% [markdown]
# Reading the plot: the solution is parallel to the weights here (θ grows along the target), so OrthoGrad
# removes most of each update while t < W/2 and progress jumps when it switches off at W/2. After W the
# mask is frozen. The dashed fast path lies on the reference (checked below to 1e-4 relative).

# %%
for compat in ("upstream", "fixed"):
    ref = results[(compat, "reference.automagic_cameamp")]
    fast = results[(compat, "optimized.automagic_cameamp")]
    assert max(abs(a - b) / a for a, b in zip(ref, fast, strict=True)) < 1e-4
    assert ref[-1] < ref[0]
