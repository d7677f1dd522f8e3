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
# # ADOPT (Taniguchi et al., NeurIPS 2024) — converges with any β2
# Reddi et al.'s online problem: f_t(x) = 4x when t ≡ 1 (mod 3), else −x, on x ∈ [−1, 1]. The average
# loss is minimised at x = −1. With β1 = 0 and a small β2 = 1/17, Adam's normaliser reacts to the large
# gradient it is dividing, and x drifts to +1, the worst point. ADOPT normalises by v_{t−1}, which does
# not contain the current gradient, and reaches −1 (reference.adopt_stability.ADOPT).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW
from reference.adopt_stability import ADOPT


def online(cls, steps=3000, **kwargs):
    x = torch.nn.Parameter(torch.zeros(1))
    opt = cls([x], lr=1e-2, betas=(0.0, 1 / 17), eps=1e-8, **kwargs)
    path = []
    for t in range(1, steps + 1):
        x.grad = torch.tensor([4.0 if t % 3 == 1 else -1.0])
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
        path.append(float(x.detach()))
    return path


adam, adopt = online(AdamW, weight_decay=0.0), online(ADOPT)
plt.figure(figsize=(6, 3.5))
plt.plot(adam, label="Adam (AdamW, λ = 0)")
plt.plot(adopt, label="ADOPT")
plt.axhline(-1, color="grey", ls=":", label="optimum")
plt.xlabel("step")
plt.ylabel("x")
plt.legend()
plt.tight_layout()
assert adam[-1] > 0.99 and adopt[-1] < -0.95
