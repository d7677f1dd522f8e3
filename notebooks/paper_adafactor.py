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
# # Adafactor (Shazeer & Stern, ICML 2018) — second moments in O(n + m)
# Left: optimizer state elements per n×n weight matrix: Adam keeps 2n², Adafactor (no momentum) keeps
# n + n row and column statistics (R·Cᵀ/ΣR rebuilds the second moment). Right: the loss of a linear
# regression trained with Adafactor (reference.adafactor.Adafactor). Its step is relative to RMS(θ)
# (floored at ε2 = 1e-3), so the weights start small but not at zero.

# %%
import matplotlib.pyplot as plt
import torch

from reference.adafactor import Adafactor

sizes = [64, 256, 1024, 4096]
adam_state = [2 * n * n for n in sizes]
adafactor_state = [2 * n for n in sizes]

g = torch.Generator().manual_seed(0)
X = torch.randn(512, 64, generator=g)
W_true = torch.randn(64, 32, generator=g)
Y = X @ W_true
W = torch.nn.Parameter(0.5 * torch.randn(64, 32, generator=g))
opt = Adafactor([W], lr=1e-2)
losses = []
for _ in range(400):
    loss = ((X @ W - Y) ** 2).mean()
    W.grad = torch.autograd.grad(loss, [W])[0]
    opt.step()
    losses.append(float(loss.detach()))
state_elements = sum(t.numel() for t in opt.state[W].values() if torch.is_tensor(t))

fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
ax[0].plot(sizes, adam_state, "o-", label="Adam: 2n²")
ax[0].plot(sizes, adafactor_state, "o-", label="Adafactor: 2n")
ax[0].set(xscale="log", yscale="log", xlabel="n (n×n matrix)", ylabel="state elements")
ax[0].legend()
ax[1].plot(losses)
ax[1].set(yscale="log", xlabel="step", ylabel="regression loss")
plt.tight_layout()
assert state_elements == 64 + 32 and losses[-1] < 0.05 * losses[0]
