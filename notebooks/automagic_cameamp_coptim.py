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
# # Automagic_CameAMP_COptim — the contextual multiplier (optimizers.md O3–O5, techniques.md T16, T17)
# The context learns only from losses. Without one (sd-scripts never passes a closure) Λ ≡ 1.2 [I-02].
# With `step(loss=...)` it reacts: here a loss that falls, then turns noisy (edge cases), then flattens
# (stagnation). The seed-000 "original" and LoRA constant sets beside the committed code; COptim8bit
# (8-bit states, the intended O5(b) definition) beside COptim.

# %%
import matplotlib.pyplot as plt
import torch

import reference

STEPS = 150


def loss_at(i, gen):
    if i < 60:
        return 1.0 / (1 + 0.05 * i)
    if i < 100:
        return 0.01 + 2 * float(torch.rand((), generator=gen)) ** 3  # cv ≈ 1 > 0.5
    return 0.25


def train(cls, preset, with_loss=True):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(32, 48, generator=gen))
    opt = cls([w], lr=1e-3, warmup_steps=40, preset=preset, compat="fixed")
    multipliers, edges = [], []
    for i in range(STEPS):
        w.grad = w.detach() * 0.01 + 0.01 * torch.randn(w.shape, generator=gen)
        opt.step(loss=loss_at(i, gen) if with_loss else None)
        multipliers.append(opt.state[w]["contextual_lr_multiplier"])
        edges.append(opt.state[w]["edge_case_count"])
    return multipliers, edges, w.detach().clone()


fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
runs = {}
for preset in ("code_s1", "seed000_lora", "seed000_original"):
    runs[preset] = train(reference.Automagic_CameAMP_COptim, preset)
    ax[0].plot(runs[preset][0], label=preset)
    ax[1].plot(runs[preset][1], label=preset)
no_loss = train(reference.Automagic_CameAMP_COptim, "code_s1", with_loss=False)
ax[0].plot(no_loss[0], "k:", label="no loss given (sd-scripts)")
ax[0].set(xlabel="step", ylabel="Λ·edge factor", title="contextual LR multiplier")
ax[1].set(xlabel="step", ylabel="edge_case_count", title="edge cases (noisy phase: steps 60–100)")
ax[0].legend(fontsize=7)
ax[1].legend(fontsize=7)
plt.tight_layout()
assert set(no_loss[0]) == {1.2}
assert max(runs["code_s1"][1][60:100]) > 0  # the noisy phase is detected
assert runs["seed000_lora"][0] != runs["code_s1"][0]  # the LoRA edge factor differs

# %% [markdown]
# COptim8bit follows COptim within the 8-bit storage error.

# %%
w32 = train(reference.Automagic_CameAMP_COptim, "code_s1")[2]
w8 = train(reference.Automagic_CameAMP_COptim8bit, "code_s1")[2]
print("max |θ_8bit − θ_fp32| / max|θ| =", float((w8 - w32).abs().max() / w32.abs().max()))
assert torch.isfinite(w8).all()
