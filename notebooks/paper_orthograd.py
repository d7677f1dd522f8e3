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
# # ⊥Grad (Prieto et al., ICLR 2025) — no step along the weights
# Logistic regression on separable data: once every point is classified, the loss keeps falling by
# scaling the weights up (the "naïve loss minimisation" direction), so AdamW's weight norm grows without
# bound. ⊥AdamW = OrthoGrad(AdamW) removes the gradient's component along θ before AdamW sees it; the
# norm then stays near its start (reference.orthograd.OrthoGrad).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW
from reference.orthograd import OrthoGrad

g = torch.Generator().manual_seed(0)
X = torch.randn(200, 10, generator=g)
y = (X @ torch.randn(10, generator=g) > 0).float()


def run(orthogonal):
    w = torch.nn.Parameter(0.1 * torch.randn(10, generator=torch.Generator().manual_seed(1)))
    base = AdamW([w], lr=5e-2, weight_decay=0.0)
    opt = OrthoGrad(base) if orthogonal else base
    norms, accuracy = [], []
    for _ in range(400):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)
        w.grad = torch.autograd.grad(loss, [w])[0]
        opt.step()
        norms.append(float(w.detach().norm()))
        accuracy.append(float(((X @ w.detach() > 0).float() == y).float().mean()))
    return norms, accuracy


runs = {"AdamW": run(False), "⊥AdamW": run(True)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (norms, accuracy) in runs.items():
    ax[0].plot(norms, label=label)
    ax[1].plot(accuracy, label=label)
ax[0].set(xlabel="step", ylabel="‖w‖")
ax[0].legend()
ax[1].set(xlabel="step", ylabel="training accuracy")
plt.tight_layout()
assert runs["AdamW"][0][-1] > 5 * runs["⊥AdamW"][0][-1]
assert runs["⊥AdamW"][1][-1] > 0.95
