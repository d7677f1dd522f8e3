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
# # Automagic per-element LR mask (spec T8a; ostris ai-toolkit, no paper)
# +lr_bump where the gradient sign repeats, −lr_bump where it flips. Elements with a consistent gradient
# sign climb, noisy ones sink to min_lr. Upstream starts from the constructor lr and adds η − 1e-6 at the
# first update (≈ 2× the LR [I-26]); the fixed mode starts at the group lr.

# %%
import matplotlib.pyplot as plt
import torch

from reference import lr_mask

torch.manual_seed(5)
n = 2000
bias = torch.linspace(-1, 1, n)  # elements with a steadier sign at both ends
history = {"upstream": [], "fixed": []}
for mode in history:
    lr = 1e-4
    mask = torch.full((n,), lr)
    lr_max = lr_mask.LR_MAX_INIT if mode == "upstream" else lr
    polarity = torch.zeros(n, dtype=torch.bool)
    for _ in range(300):
        g = bias + torch.randn(n)
        agree, polarity = lr_mask.polarity_agreement(g, polarity)
        mask, lr_max = lr_mask.warmup_lr_mask(mask, agree, lr, lr_max, 3e-6, 1e-7, 1e-3)
        history[mode].append(mask.clone())

fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
for mode, h in history.items():
    ax[0].plot([float(m.mean()) for m in h], label=mode)
ax[0].set_title("mean of the mask")
ax[0].set_xlabel("step")
ax[0].legend()
ax[1].plot(bias, history["fixed"][-1], ".", ms=1)
ax[1].set_xlabel("gradient bias of the element")
ax[1].set_title("mask after 300 steps (fixed)")
plt.show()
assert float(history["upstream"][0].mean()) > 1.9e-4 and float(history["fixed"][0].mean()) < 1.1e-4
