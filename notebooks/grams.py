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
# # Grams blend (spec T6)
# Cao, Li & Song, arXiv:2412.17107: use the gradient's sign with the update's magnitude. The family blends
# it in with α_t = δ^t, so the sign correction fades out. Plot: fraction of update signs that follow g̃.

# %%
import matplotlib.pyplot as plt
import torch

from reference.grams import grams_alpha, grams_blend

torch.manual_seed(3)
update = torch.randn(10000)
grad = torch.randn(10000)
steps = range(1, 6000, 50)
agree = [
    float((torch.sign(grams_blend(update, grad, grams_alpha(0.9995, t))) == torch.sign(grad)).float().mean())
    for t in steps
]
plt.plot(steps, agree)
plt.xlabel("step t")
plt.ylabel("share of update signs equal to sign(g̃)")
plt.title("Grams blend: α = 0.9995^t")
plt.show()
assert agree[0] > 0.99 and agree[-1] < 0.6
