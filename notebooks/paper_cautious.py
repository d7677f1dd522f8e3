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
# # Cautious optimizers (Liang et al., 2024) — C-AdamW
# A noisy quadratic whose optimum jumps at step 150. Left: the loss of AdamW and C-AdamW (the Adam
# direction masked where it disagrees with the current gradient, rescaled by 1/mean(mask)). Right: the
# fraction of coordinates the mask keeps: about half at the noise floor, where the momentum and the noisy
# gradient disagree at random, and nearly all while the loss falls after the jump
# (reference.adamw.AdamW(cautious=True), reference.cautious).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW
from reference.cautious import cautious_mask

targets = (torch.linspace(-1, 1, 300), torch.linspace(1, -1, 300))


def run(cautious):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(300))
    opt = AdamW([p], lr=2e-2, weight_decay=0.0, cautious=cautious)
    losses, kept = [], []
    for step in range(300):
        target = targets[step >= 150]
        grad = p.detach() - target + 0.2 * torch.randn(300, generator=g)
        p.grad = grad
        if step:
            m = opt.state[p]["exp_avg"]
            kept.append(float((cautious_mask(m, grad) != 0).float().mean()))
        opt.step()
        losses.append(float(0.5 * ((p.detach() - target) ** 2).mean()))
    return losses, kept


runs = {"AdamW": run(False), "C-AdamW": run(True)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (losses, _) in runs.items():
    ax[0].plot(losses, label=label)
ax[1].plot(runs["C-AdamW"][1])
ax[0].set(yscale="log", xlabel="step", ylabel="loss")
ax[0].legend()
ax[1].set(xlabel="step", ylabel="fraction kept by the mask")
plt.tight_layout()
kept = runs["C-AdamW"][1]
assert 0.3 < kept[140] < 0.7 and max(kept[150:160]) > 0.85
assert runs["C-AdamW"][0][-1] < 0.01 * runs["C-AdamW"][0][150]
