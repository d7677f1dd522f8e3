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
# # ⊥Grad / OrthoGrad (spec T7a)
# Prieto et al., ICLR 2025, arXiv:2501.04697: remove the gradient component along θ, so weights cannot grow
# by scaling (naïve loss minimisation), then rescale to ‖g‖. Left: ‖θ‖ under repeated steps along
# θ + noise. Right: the degenerate one-element case — upstream's step is rounding noise with arbitrary sign.

# %%
import matplotlib.pyplot as plt
import torch

from reference.orthograd import PARALLEL_TOL, orthograd

torch.manual_seed(4)
theta_plain = torch.randn(500)
theta_orth = theta_plain.clone()
norm_plain, norm_orth = [], []
for _ in range(200):
    g_plain = -(theta_plain + 0.5 * torch.randn(500))  # a direction that grows the weights
    g_orth = -(theta_orth + 0.5 * torch.randn(500))
    theta_plain = theta_plain - 0.01 * g_plain
    theta_orth = theta_orth - 0.01 * orthograd(theta_orth, g_orth)
    norm_plain.append(float(theta_plain.norm()))
    norm_orth.append(float(theta_orth.norm()))

signs = [float(torch.sign(orthograd(torch.tensor(x), torch.tensor(0.3)))) for x in torch.linspace(0.5, 1.5, 200)]
fixed = [float(orthograd(torch.tensor(x), torch.tensor(0.3), PARALLEL_TOL)) for x in torch.linspace(0.5, 1.5, 200)]

fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].plot(norm_plain, label="plain step")
ax[0].plot(norm_orth, label="OrthoGrad step")
ax[0].set_title("‖θ‖ under a radial gradient")
ax[0].legend()
ax[1].plot(torch.linspace(0.5, 1.5, 200), signs, ".", label="upstream sign of the step")
ax[1].plot(torch.linspace(0.5, 1.5, 200), fixed, "-", label="fixed: no radial step")
ax[1].set_xlabel("θ (one element), U = 0.3")
ax[1].set_title("one-element OrthoGrad")
ax[1].legend()
plt.show()
assert norm_orth[-1] < 1.1 * norm_orth[0] < norm_plain[-1]
assert {-1.0, 1.0} <= set(signs) and set(fixed) == {0.0}  # upstream: both signs (or 0) by rounding
