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
# # AdaBelief residual variance (spec T3)
# Zhuang et al., NeurIPS 2020, arXiv:2010.07468, Alg. 2: $s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon$.
# The family has no bias correction [I-21], so the first updates are amplified by up to 1/√(1−β3) ≈ 31.6;
# the fixed mode divides r by (1 − β3^t). The plot shows |U|/|m| over the first steps for both.

# %%
import matplotlib.pyplot as plt
import torch

from reference import adabelief_residual

torch.manual_seed(1)
beta3, eps2 = 0.999, 1e-16
r = torch.zeros(2000)
m = torch.zeros(2000)
gain_up, gain_fixed = [], []
for t in range(1, 200):
    u = torch.randn(2000)
    m = 0.9 * m + 0.1 * u
    r = adabelief_residual.update_residual(r, u, m, beta3, eps2)
    up = adabelief_residual.residual_direction(m, r, eps2)
    fixed = adabelief_residual.residual_direction(m, r, eps2, bias_correction=1 - beta3**t)
    gain_up.append(float((up.abs() / m.abs().clamp(min=1e-12)).median()))
    gain_fixed.append(float((fixed.abs() / m.abs().clamp(min=1e-12)).median()))

plt.semilogy(gain_up, label="upstream (no bias correction)")
plt.semilogy(gain_fixed, label="fixed (r / (1 − β3^t))")
plt.xlabel("step")
plt.ylabel("median |U| / |m|")
plt.title("early-step amplification of the residual normaliser")
plt.legend()
plt.show()
assert gain_up[0] > 10 * gain_fixed[0]
