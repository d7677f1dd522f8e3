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
# # AdaBelief (Zhuang et al., NeurIPS 2020) — Adam with the belief (g − m)² as second moment
# The Rosenbrock function from (−1.5, 2): Adam and AdaBelief with the same learning rate. AdaBelief's
# denominator is small where the gradient agrees with its momentum (a straight valley), so it takes
# larger steps along the valley floor (reference.adabelief_residual.AdaBelief).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adabelief_residual import AdaBelief
from reference.adamw import AdamW


def rosenbrock(cls, **kwargs):
    p = torch.nn.Parameter(torch.tensor([-1.5, 2.0]))
    opt = cls([p], lr=1e-2, **kwargs)
    losses, path = [], []
    for _ in range(2000):
        loss = (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
        p.grad = torch.autograd.grad(loss, [p])[0]
        opt.step()
        losses.append(float(loss.detach()))
        path.append(p.detach().clone())
    return losses, torch.stack(path)


runs = {"Adam": rosenbrock(AdamW, weight_decay=0.0), "AdaBelief": rosenbrock(AdaBelief, eps=1e-16)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
xs, ys = torch.meshgrid(torch.linspace(-2, 2, 200), torch.linspace(-1, 3, 200), indexing="xy")
ax[0].contour(xs, ys, (1 - xs) ** 2 + 100 * (ys - xs**2) ** 2, levels=torch.logspace(-1, 3, 12), cmap="Greys")
for label, (losses, path) in runs.items():
    ax[0].plot(path[:, 0], path[:, 1], label=label)
    ax[1].plot(losses, label=label)
ax[0].set(title="paths from (−1.5, 2)")
ax[1].set(yscale="log", xlabel="step", ylabel="loss")
ax[1].legend()
plt.tight_layout()
assert runs["AdaBelief"][0][-1] < 0.5 * runs["Adam"][0][-1]
