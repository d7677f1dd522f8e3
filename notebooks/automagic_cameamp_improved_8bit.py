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
# # Automagic_CameAMP_Improved_8Bit (optimizers.md O7; T4c, T8e, T19c)
# Left: a rank-4 LoRA fit (W = 100). During warm-up upstream's update is the T4c state s, whose sign is
# that of m ⊙ u (agreement), not of the gradient: the loss *rises* until t = W, then the momentum
# update takes over. The corrected warm-up update ((1+s)/2)·m descends from the start. After warm-up
# the update is the raw momentum m (u enters only through tanh), so the step is lr·m, SGD-like: this
# class wants an lr on the SGD scale (here 0.3 and 1), not an Adam-like 1e-4.
# Middle: the T8e learning-rate "mask" of three rows of B: a ramp η·t/W scaled by each row's inverse
# relative gradient norm, then a random walk clamped to [0.1η, 10η] (own generator, seeded).
# Right: full-precision vs 8-bit states (bitsandbytes blockwise codes, force_8bit) for the fixed fit,
# with the measured state bytes per parameter.

# %%
import matplotlib.pyplot as plt
import torch

import reference

W = 100


def fit(compat, lr, steps=300, **kwargs):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(64, 4, generator=g) @ torch.randn(4, 48, generator=g)
    a = torch.nn.Parameter(torch.randn(4, 48, generator=g) * 0.1)
    b = torch.nn.Parameter(torch.zeros(64, 4))
    opt = reference.Automagic_CameAMP_Improved_8Bit([a, b], lr=lr, warmup_steps=W, compat=compat, **kwargs)
    losses, masks = [], []
    for _ in range(steps):
        loss = ((b @ a - target) ** 2).mean()
        a.grad, b.grad = (t.detach() for t in torch.autograd.grad(loss, [a, b]))
        opt.step()
        losses.append(float(loss.detach()))
        masks.append(opt.state[b]["lr_mask"].reshape(-1)[:3].clone())
    return losses, torch.stack(masks), opt.state_bytes() / (a.numel() + b.numel())


full = {"min_8bit_size": 2**40}
runs = {
    "upstream, lr 0.3": fit("upstream", 0.3, **full),
    "fixed, lr 0.3": fit("fixed", 0.3, **full),
    "fixed, lr 1": fit("fixed", 1.0, **full),
}
eight_bit = fit("fixed", 1.0, force_8bit=True)

fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
for label, (losses, _, _) in runs.items():
    ax[0].plot(losses, label=label)
ax[0].axvline(W, color="grey", ls=":")
ax[0].set(yscale="log", xlabel="step", ylabel="loss", title="warm-up: upstream ascends")
ax[0].legend()
masks = runs["fixed, lr 1"][1]
ax[1].plot(masks.numpy())
ax[1].axhline(0.1, color="grey", ls="--")
ax[1].axhline(10.0, color="grey", ls="--")
ax[1].axvline(W, color="grey", ls=":")
ax[1].set(yscale="log", xlabel="step", ylabel="E of rows 0–2 (lr 1)", title="T8e: ramp, then random walk")
for label, (losses, _, bytes_per_param) in {"fp32 states": runs["fixed, lr 1"], "8-bit states": eight_bit}.items():
    ax[2].plot(losses, label=f"{label} ({bytes_per_param:.1f} B/param)")
ax[2].set(yscale="log", xlabel="step", ylabel="loss", title="fixed, lr 1: fp32 vs 8-bit state")
ax[2].legend()
plt.tight_layout()

up = runs["upstream, lr 0.3"][0]
assert max(up[:W]) > 2 * up[0] and up[-1] < up[0]  # rises during warm-up, falls after
assert runs["fixed, lr 0.3"][0][W] < up[0] and runs["fixed, lr 1"][0][-1] < 1e-2 * up[0]
assert float(masks[W:].min()) >= 0.1 * (1 - 1e-6) and float(masks[W:].max()) <= 10.0 * (1 + 1e-6)
assert eight_bit[0][-1] < 1e-2 * up[0] and eight_bit[2] < 0.5 * runs["fixed, lr 1"][2]
