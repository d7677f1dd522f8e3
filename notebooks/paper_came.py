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
# # CAME (Luo et al., ACL 2023) — Adafactor's memory with a confidence-weighted step
# A noisy linear regression (64×32 weights). Left: loss for Adafactor (reference.adafactor, no momentum),
# CAME (reference.came_style.CAME) and AdamW. Right: optimizer state elements: CAME adds a momentum and a
# factored instability estimate to Adafactor's factored second moment, still far below Adam's 2·n·m.

# %%
import matplotlib.pyplot as plt
import torch

from reference.adafactor import Adafactor
from reference.adamw import AdamW
from reference.came_style import CAME

g = torch.Generator().manual_seed(0)
X = torch.randn(512, 64, generator=g)
Y = X @ torch.randn(64, 32, generator=g)


def run(build):
    noise = torch.Generator().manual_seed(1)
    W = torch.nn.Parameter(0.5 * torch.randn(64, 32, generator=torch.Generator().manual_seed(2)))
    opt = build([W])
    losses = []
    for _ in range(400):
        loss = ((X @ W - Y) ** 2).mean()
        W.grad = torch.autograd.grad(loss, [W])[0] + 0.05 * torch.randn(64, 32, generator=noise)
        opt.step()
        losses.append(float(loss.detach()))
    state = sum(t.numel() for t in opt.state[W].values() if torch.is_tensor(t))
    return losses, state


runs = {
    "Adafactor": run(lambda p: Adafactor(p, lr=1e-2)),
    "CAME": run(lambda p: CAME(p, lr=2e-2)),
    "AdamW": run(lambda p: AdamW(p, lr=2e-2, weight_decay=0.0)),
}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (losses, _) in runs.items():
    ax[0].plot(losses, label=label)
ax[0].set(yscale="log", xlabel="step", ylabel="loss")
ax[0].legend()
ax[1].bar(list(runs), [state for _, state in runs.values()])
ax[1].set(yscale="log", ylabel="state elements (64×32 weights)")
plt.tight_layout()
assert runs["CAME"][1] == 64 * 32 + 2 * (64 + 32) < runs["AdamW"][1] == 2 * 64 * 32
assert all(losses[-1] < 0.05 * losses[0] for losses, _ in runs.values())
