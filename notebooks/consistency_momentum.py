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
# # Consistency momentum with β1 decay (spec T5)
# Xu et al., arXiv:2404.07946: decaying momentum speeds up diffusion training. The family uses
# β1_t = max(β1·δ^t, 0.4) for t ≥ W/2, and a second average m̄ with the undecayed β1 for the residual.

# %%
import matplotlib.pyplot as plt

from reference.consistency_momentum import decayed_beta1

steps = range(0, 4000, 10)
for decay in (0.9995, 0.999, 0.9999):
    plt.plot(steps, [decayed_beta1(0.8, decay, t) for t in steps], label=f"δ = {decay}")
plt.axhline(0.4, color="grey", ls=":")
plt.xlabel("step t")
plt.ylabel("β1_t")
plt.title("β1 decay reaches the 0.4 floor at t ≈ 1386 with the default δ")
plt.legend()
plt.show()
assert decayed_beta1(0.8, 0.9995, 1385) > 0.4 == decayed_beta1(0.8, 0.9995, 1386)
