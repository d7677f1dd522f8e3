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
# # AGR — Adaptive Gradient Regularization (Jiang et al., 2024)
# Left: Ψ(G) = G − α⊙G with α = |G|/Σ|G| over one tensor shrinks each entry by its share of the tensor's
# L1 mass, so only entries that dominate the tensor are damped (the diagonal is Ψ = G). Right: AdamW and
# AdamW_AGR on a regression whose gradient has a few dominant coordinates
# (reference.agr.agr_per_tensor, reference.agr.AdamWAGR; the family's T1a divides by the whole group's mass).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW
from reference.agr import AdamWAGR, agr_per_tensor

g = torch.Generator().manual_seed(0)
G = torch.randn(200, generator=g)
G[:3] *= 60  # three dominant entries
psi = agr_per_tensor(G)

X = torch.randn(256, 16, generator=g) * torch.logspace(0, 1.5, 16)
y = X @ torch.randn(16, generator=g)


def run(cls):
    w = torch.nn.Parameter(torch.zeros(16))
    opt = cls([w], lr=3e-2, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = ((X @ w - y) ** 2).mean()
        w.grad = torch.autograd.grad(loss, [w])[0]
        opt.step()
        losses.append(float(loss.detach()))
    return losses


runs = {"AdamW": run(AdamW), "AdamW_AGR": run(AdamWAGR)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
ax[0].scatter(G, psi, s=6)
ax[0].plot([G.min(), G.max()], [G.min(), G.max()], color="grey", ls=":")
ax[0].set(xlabel="g", ylabel="Ψ(g)", title="per-tensor AGR")
for label, losses in runs.items():
    ax[1].plot(losses, label=label)
ax[1].set(yscale="log", xlabel="step", ylabel="loss")
ax[1].legend()
plt.tight_layout()
share = G[:3].abs() / G.abs().sum()
assert torch.allclose(psi[:3], G[:3] * (1 - share)) and float((psi[3:] / G[3:]).min()) > 0.98
assert runs["AdamW_AGR"][-1] < 1e-2 * runs["AdamW_AGR"][0]
