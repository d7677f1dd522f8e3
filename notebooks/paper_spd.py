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
# # SPD — Selective Projection Decay (Tian, Huang & Kira, NeurIPS 2024)
# Fine-tuning from θ0 towards a nearby target under heavy gradient noise. Plain Adam drifts away from θ0
# with the noise; Adam-SPD pulls a tensor back towards θ0 on the steps where the selection rule fires
# (c_t < 0 and the step grew ‖θ − θ0‖), so it stays closer to θ0 and to the target
# (reference.spd.AdamSPD).

# %%
import matplotlib.pyplot as plt
import torch

from reference.spd import AdamSPD

g = torch.Generator().manual_seed(0)
theta0 = torch.randn(50, generator=g)
target = theta0 + 0.1 * torch.randn(50, generator=g)


def run(decay):
    noise = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(theta0.clone())
    opt = AdamSPD([p], lr=1e-2, weight_decay=decay)
    drift, error = [], []
    for _ in range(300):
        p.grad = (p.detach() - target) + 2.0 * torch.randn(50, generator=noise)
        opt.step()
        drift.append(float((p.detach() - theta0).norm()))
        error.append(float((p.detach() - target).norm()))
    return drift, error


runs = {"Adam (λ = 0)": run(0.0), "Adam-SPD (λ = 1)": run(1.0)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (drift, error) in runs.items():
    ax[0].plot(drift, label=label)
    ax[1].plot(error, label=label)
ax[0].set(xlabel="step", ylabel="‖θ − θ0‖")
ax[0].legend()
ax[1].set(xlabel="step", ylabel="‖θ − target‖")
plt.tight_layout()
plain, decayed = runs["Adam (λ = 0)"], runs["Adam-SPD (λ = 1)"]
assert decayed[0][-1] < 0.95 * plain[0][-1] and decayed[1][-1] < plain[1][-1]
