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
# # AdamS (Zhang, Wang & Chen, EMNLP 2025) — momentum as its own normaliser
# AdamS divides the momentum by √(β2·m_{t−1}² + (1−β2)·g²), so it keeps one state tensor (SGD-momentum
# memory) instead of Adam's two. Left: a noisy regression with AdamW and AdamS. Right: optimizer state
# bytes per parameter (reference.dual_momentum.AdamS; the family's T15a "dual momentum" is a different
# algorithm [I-45]).

# %%
import matplotlib.pyplot as plt
import torch

from reference.adamw import AdamW
from reference.dual_momentum import AdamS

g = torch.Generator().manual_seed(0)
X = torch.randn(512, 32, generator=g)
y = X @ torch.randn(32, generator=g)


def run(build):
    noise = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.zeros(32))
    opt = build([w])
    losses = []
    for _ in range(400):
        loss = ((X @ w - y) ** 2).mean()
        w.grad = torch.autograd.grad(loss, [w])[0] + 0.1 * torch.randn(32, generator=noise)
        opt.step()
        losses.append(float(loss.detach()))
    state = sum(v.numel() * v.element_size() for v in opt.state[w].values() if torch.is_tensor(v))
    return losses, state / w.numel()


runs = {"AdamW": run(lambda p: AdamW(p, lr=2e-2, weight_decay=0.0)), "AdamS": run(lambda p: AdamS(p, lr=2e-2))}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (losses, _) in runs.items():
    ax[0].plot(losses, label=label)
ax[0].set(yscale="log", xlabel="step", ylabel="loss")
ax[0].legend()
ax[1].bar(list(runs), [b for _, b in runs.values()])
ax[1].set(ylabel="state bytes / parameter")
plt.tight_layout()
assert runs["AdamS"][1] == 4 and runs["AdamW"][1] == 8
assert runs["AdamS"][0][-1] < 1e-2 * runs["AdamS"][0][0]
