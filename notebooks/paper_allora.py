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
# # ALLoRA (Huang & Balestriero, 2024) — the adapter's gradients scaled per output row
# A frozen layer is adapted to a rank-4 change with a rank-4 adapter. Plain LoRA scales its output by
# η = α/r; ALLoRA (reference.allora.ALLoRALinear) drops that scale and divides the gradients reaching
# A and B by √(‖(BA)_i,:‖ + 1/η²), so at B = 0 every row gets η and rows that have grown get less.
# Left: training loss with SGD at one learning rate. Right: the ALLoRA row scales s_i over training.
# The family's T9a row scaling takes the rows of A and B themselves, once at the start (see
# notebooks/allora.py).

# %%
import matplotlib.pyplot as plt
import torch

from reference.allora import ALLoRALinear, output_row_scale

ETA, RANK, STEPS, LR = 0.5, 4, 300, 0.5
g = torch.Generator().manual_seed(0)
base = torch.nn.Linear(32, 32)
change = 0.5 * torch.randn(32, RANK, generator=g) @ torch.randn(RANK, 32, generator=g) / 32**0.5
X = torch.randn(256, 32, generator=g)
with torch.no_grad():
    Y = base(X) + X @ change.T


def train(allora: bool):
    torch.manual_seed(1)  # the same A at the start
    layer = ALLoRALinear(base, RANK, ETA)
    if allora:
        forward = layer
    else:  # plain LoRA on the same parameters: y = base(x) + η·B A x, ordinary gradients

        def forward(x):
            return layer.base(x) + ETA * (x @ layer.lora_a.T @ layer.lora_b.T)

    opt = torch.optim.SGD([layer.lora_a, layer.lora_b], lr=LR)
    losses, scales = [], []
    for _ in range(STEPS):
        loss = ((forward(X) - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        scales.append(output_row_scale(layer.lora_a.detach(), layer.lora_b.detach(), ETA))
    return losses, torch.stack(scales)


runs = {"LoRA (scale η)": train(False), "ALLoRA": train(True)}
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (losses, _) in runs.items():
    ax[0].plot(losses, label=label)
ax[0].set(yscale="log", xlabel="step", ylabel="mean squared error")
ax[0].legend()
ax[1].plot(runs["ALLoRA"][1], lw=0.7)
ax[1].axhline(ETA, color="k", ls=":", label="η (B = 0)")
ax[1].set(xlabel="step", ylabel="row scale s_i")
ax[1].legend()
plt.tight_layout()

first_scales = runs["ALLoRA"][1][0]
assert torch.all(first_scales <= ETA) and torch.all(runs["ALLoRA"][1][-1] < first_scales)
for losses, _ in runs.values():
    assert losses[-1] < 1e-2 * losses[0]
print({label: f"{losses[0]:.4f} → {losses[-1]:.4f}" for label, (losses, _) in runs.items()})
