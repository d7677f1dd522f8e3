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
# # 'CAME-style' scaling with RMS update clipping (spec T2) and the ADOPT clip (came=False)
# Not CAME: an unfactored Adafactor second moment with Adafactor's update clipping
# (Shazeer & Stern, ICML 2018, arXiv:1804.04235, Sec. 6). With came=False the family uses ADOPT's clip
# schedule clamp(g, ±t^{1/4}) (Taniguchi et al., NeurIPS 2024, arXiv:2411.02853).
# Below: the RMS of u per step for a gradient whose scale jumps ×100 at step 30.

# %%
import matplotlib.pyplot as plt
import torch

from reference import came_style

torch.manual_seed(0)
v = came_style.seed_second_moment(torch.randn(1000) * 0.01, 1e-30)
rms_u, rms_raw = [], []
for t in range(2, 80):
    scale = 1.0 if t >= 30 else 0.01
    g = torch.randn(1000) * scale
    raw = g * v.rsqrt()
    u, v = came_style.scale_v1(g, v, 0.99, 1e-30, clip_threshold=1.0)
    rms_raw.append(float(came_style.rms(raw)))
    rms_u.append(float(came_style.rms(u)))
bounds = [t**0.25 for t in range(1, 80)]

fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].semilogy(range(2, 80), rms_raw, label="RMS(g/√v) before clipping")
ax[0].semilogy(range(2, 80), rms_u, label="RMS(u) after clipping (c = 1)")
ax[0].set_xlabel("step")
ax[0].legend()
ax[0].set_title("a ×100 gradient jump is clipped to RMS 1")
ax[1].plot(range(1, 80), bounds)
ax[1].set_title("came=False: ADOPT clip bound t^{1/4}")
ax[1].set_xlabel("step")
plt.show()
assert max(rms_u) <= 1.0 + 1e-5 and max(rms_raw) > 10
