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
# # TAM — Torque-Aware Momentum (spec T4a, [I-18])
# Malviya et al., arXiv:2412.18790: damp the gradient by the momentum/gradient cosine s.
# Upstream multiplies dim-0-normalised tensors element-wise, so each term is O(1/n₀) and s stays ≈ 0;
# the fixed mode uses the paper's scalar cosine. Gradients here flip sign every 10 steps.

# %%
import matplotlib.pyplot as plt
import torch

from reference import tam

torch.manual_seed(2)
direction = torch.randn(64, 32)
m_up, s_up = torch.zeros(64, 32), torch.zeros(64, 32)
m_fx, s_fx = torch.zeros(64, 32), torch.zeros(())
s_up_mean, s_fixed = [], []
for t in range(60):
    sign = 1.0 if (t // 10) % 2 == 0 else -1.0
    x = sign * direction + 0.3 * torch.randn(64, 32)
    m_up, s_up = tam.tam_upstream(m_up, s_up, x, 1e-30)
    m_fx, s_fx = tam.tam_cosine(m_fx, s_fx, x, 1e-30)
    s_up_mean.append(float(s_up.mean()))
    s_fixed.append(float(s_fx))

plt.plot(s_up_mean, label="upstream: mean of s (element-wise N₀ product)")
plt.plot(s_fixed, label="fixed: scalar cosine EMA")
plt.xlabel("step")
plt.ylabel("s")
plt.title("TAM agreement signal under sign flips every 10 steps")
plt.legend()
plt.show()
assert abs(max(s_up_mean, key=abs)) < 0.05 < max(s_fixed)
