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
# # 8-bit optimizers via block-wise quantisation (Dettmers et al., ICLR 2022)
# Left: the signed dynamic tree code: 256 values, dense near 0 (7 decades) and linear within each
# decade. Right: round-trip error of Adam-like second-moment data (heavy-tailed, with outliers) by block
# size: a smaller block confines an outlier's absmax to fewer elements. Solid: bitsandbytes' CPU rule
# (2^16-bin table), bit-identical to bitsandbytes; dashed: the paper's nearest code
# (reference.blockwise_8bit).

# %%
import matplotlib.pyplot as plt
import torch

from reference import blockwise_8bit

code = blockwise_8bit.dynamic_tree_code()
g = torch.Generator().manual_seed(0)
x = torch.randn(1 << 16, generator=g) ** 2 * 1e-4
x[::5000] *= 1e3  # rare outliers
sizes = [64, 128, 256, 512, 1024, 2048, 4096]
errors = {"table": [], "nearest": []}
for rule in errors:
    for b in sizes:
        q, absmax = blockwise_8bit.quantize_readable(x, b, rule=rule)
        x_hat = code[q.long()] * absmax.repeat_interleave(b)[: x.numel()]
        errors[rule].append(float(((x_hat - x).abs() / x.abs().clamp(min=1e-12)).median()))

fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
ax[0].plot(code.numpy(), ".", ms=3)
ax[0].set(xlabel="code index", ylabel="value", title="dynamic tree code")
ax[1].plot(sizes, errors["table"], "o-", label="bitsandbytes CPU table")
ax[1].plot(sizes, errors["nearest"], "o--", label="nearest code (paper)")
ax[1].set(xscale="log", yscale="log", xlabel="block size", ylabel="median relative error")
ax[1].legend()
plt.tight_layout()
assert errors["table"][0] < errors["table"][-1]
assert all(n <= t * 1.001 for n, t in zip(errors["nearest"], errors["table"], strict=True))
