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
# # AdamW (Loshchilov & Hutter, ICLR 2019) — decoupled weight decay
# Half the coordinates get pure noise as gradient, the other half a real signal. With L2 regularisation in
# the gradient (Adam, torch's `weight_decay`), the decay term is divided by √v̂ like the rest of the
# gradient, so weights with large gradient noise are barely decayed. AdamW decays every weight by η·λ per
# step, whatever its gradient scale (reference.adamw.AdamW).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW

scale = torch.cat([torch.full((100,), 10.0), torch.full((100,), 0.01)])


def run(decoupled):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.ones(200))
    if decoupled:
        opt = AdamW([p], lr=1e-2, weight_decay=1.0)
    else:
        opt = torch.optim.Adam([p], lr=1e-2, weight_decay=1.0)
    norms = []
    for _ in range(300):
        p.grad = scale * torch.randn(200, generator=g)
        opt.step()
        norms.append((float(p.detach()[:100].abs().mean()), float(p.detach()[100:].abs().mean())))
    return torch.tensor(norms)


runs = {"Adam + L2": run(False), "AdamW": run(True)}
plt.figure(figsize=(6.5, 3.8))
for label, norms in runs.items():
    plt.plot(norms[:, 0], label=f"{label}, noisy coordinates")
    plt.plot(norms[:, 1], ls="--", label=f"{label}, quiet coordinates")
plt.yscale("log")
plt.xlabel("step")
plt.ylabel("mean |θ|")
plt.legend()
plt.tight_layout()
l2, decoupled = runs["Adam + L2"][-1], runs["AdamW"][-1]
assert l2[0] > 5 * l2[1]  # L2 decay is normalised away where the gradient is loud
assert decoupled[0] < 0.2 and decoupled[0] < 0.5 * l2[0]  # AdamW decays both
