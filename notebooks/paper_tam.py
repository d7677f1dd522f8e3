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
# # Torque-Aware Momentum (Malviya et al., 2024) — damp the gradient by its agreement with momentum
# Left: ŝ, the smoothed agreement, for the paper's scalar cosine and for pytorch-optimizer's per-element
# N₀(m) ⊙ N₀(g) (the form the family's T4a copied; the mean over elements is shown): the per-element
# products are O(1/n), so ŝ ≈ 0 and d ≈ ½. Right: the loss on a noisy quadratic for both and for SGD with
# momentum (reference.tam.TAM).

# %%
import matplotlib.pyplot as plt
import torch

from reference.tam import TAM

target = torch.linspace(-1, 1, 400).reshape(20, 20)


def run(convention=None):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(20, 20))
    if convention is None:
        opt = torch.optim.SGD([p], lr=2e-2, momentum=0.9)
    else:
        opt = TAM([p], lr=2e-2, momentum=0.9, decay_rate=0.9, convention=convention)
    agreement, losses = [], []
    for _ in range(200):
        p.grad = p.detach() - target + 0.3 * torch.randn(20, 20, generator=g)
        opt.step()
        if convention is not None:
            agreement.append(float(opt.state[p]["s"].mean()))
        losses.append(float(0.5 * ((p.detach() - target) ** 2).mean()))
    return agreement, losses


runs = {"TAM, paper": run("paper"), "TAM, pytorch_optimizer": run("pytorch_optimizer"), "SGD momentum": run()}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (agreement, losses) in runs.items():
    if agreement:
        ax[0].plot(agreement, label=label)
    ax[1].plot(losses, label=label)
ax[0].set(xlabel="step", ylabel="ŝ (mean)")
ax[0].legend()
ax[1].set(yscale="log", xlabel="step", ylabel="loss")
ax[1].legend()
plt.tight_layout()
paper_s, po_s = runs["TAM, paper"][0], runs["TAM, pytorch_optimizer"][0]
assert max(paper_s) > 0.3 and max(abs(s) for s in po_s) < 0.05
assert runs["TAM, paper"][1][-1] < 0.1 * runs["TAM, paper"][1][0]
