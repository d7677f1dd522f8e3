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
# # Grams (Cao, Li & Song, 2024) — the sign of the gradient, the magnitude of Adam's step
# A noisy quadratic. Left: the fraction of coordinates that Adam moves *against* the current gradient
# (its momentum still points the old way) and Grams' (always 0: its sign is the gradient's). Right: the loss
# (reference.grams.Grams; the family's T6 blends this direction with Adam's).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW
from reference.grams import Grams

target = torch.linspace(-2, 2, 500)


def run(cls, **kwargs):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(500))
    opt = cls([p], lr=2e-2, weight_decay=0.0, **kwargs)
    against, losses = [], []
    for _ in range(300):
        grad = p.detach() - target + 0.5 * torch.randn(500, generator=g)
        p.grad = grad
        before = p.detach().clone()
        opt.step()
        against.append(float(((p.detach() - before) * grad > 0).float().mean()))
        losses.append(float(0.5 * ((p.detach() - target) ** 2).mean()))
    return against, losses


runs = {"Adam": run(AdamW), "Grams": run(Grams)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (against, losses) in runs.items():
    ax[0].plot(against, label=label)
    ax[1].plot(losses, label=label)
ax[0].set(xlabel="step", ylabel="fraction stepping against g")
ax[1].set(yscale="log", xlabel="step", ylabel="loss")
ax[1].legend()
plt.tight_layout()
assert max(runs["Grams"][0]) == 0.0 and max(runs["Adam"][0]) > 0.05
assert runs["Grams"][1][-1] < 0.05 * runs["Grams"][1][0]
