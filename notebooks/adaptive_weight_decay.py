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
# # Adaptive weight decay (spec T10)
# Nakamura & Hong, IEEE Access 2019, arXiv:1907.08931: decay set per parameter through a sigmoid of the
# standardised gradient magnitude. The family: ϑ = 2/(1 + exp(−4z)), z = (mean|g_tensor| − μ_group)/σ_group,
# θ ← θ(1 − E·wd·ϑ) while t < W/2. Tensors with larger gradients are decayed more.

# %%
import matplotlib.pyplot as plt
import torch

from reference import adaptive_weight_decay as awd

torch.manual_seed(6)
scales = torch.linspace(0.1, 3.0, 30)
grads = [torch.randn(256) * s for s in scales]
mu, sigma = awd.group_abs_stats(grads)
factors = [float(awd.decay_factor(g, mu, sigma)) for g in grads]
plt.plot(scales, factors, "o-")
plt.axhline(1.0, color="grey", ls=":")
plt.xlabel("gradient scale of the tensor")
plt.ylabel("ϑ (decay multiplier, in (0, 2))")
plt.title("adaptive weight decay across a param group")
plt.show()
assert factors[0] < 1.0 < factors[-1] < 2.0
