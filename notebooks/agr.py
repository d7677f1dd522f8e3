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
# # AGR — Adaptive Gradient Regularization (spec T1a)
# Jiang et al., arXiv:2407.16944: $\alpha = |g| / \sum|g|$, $\Psi(g) = g - \alpha \odot g$.
# The family sums over the whole param group, so α only bites where one element dominates the group's L1 mass.
# Here: the shrink factor 1 − α for a group of growing size, with one outlier element.

# %%
import matplotlib.pyplot as plt
import torch

from reference import agr

sizes = [1, 2, 4, 16, 64, 256, 1024, 4096]
outlier_factor, typical_factor = [], []
for n in sizes:
    grads = [torch.full((n,), 0.01)]
    grads[0][0] = 1.0  # one outlier
    S = agr.group_abs_sum(grads)
    g_tilde = agr.agr(grads[0], S)
    outlier_factor.append(float(g_tilde[0] / grads[0][0]))
    typical_factor.append(float(g_tilde[-1] / grads[0][-1]) if n > 1 else float("nan"))

plt.semilogx(sizes, outlier_factor, "o-", label="outlier element")
plt.semilogx(sizes, typical_factor, "s-", label="typical element")
plt.xlabel("elements in the param group")
plt.ylabel("g̃ / g = 1 − α")
plt.title("AGR shrinks only what dominates the group")
plt.legend()
plt.show()
assert outlier_factor[0] == 0.0 and typical_factor[-1] > 0.999
