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
# # HinaAdamWOptimizer — LoRA-aware AdamW (optimizers.md O9, techniques.md T1b, T4e, T11d, T12–T14, T26)
# Left: the TAM damping factor (1 + A)/2 over the first steps: upstream starts A at 0, so the LR is
# halved for ~1000 steps [I-41]; the fixed mode bias-corrects A. Middle: the dynamic weight-decay
# multiplier of LoRA and LoKr factors (T14; the 0.1 floor is never reached [I-39]). Right: a small
# LoRA (A, B by kohya names) trained with upstream and fixed rules. Upstream gives the *paired* B no ratio;
# the fixed rule gives every B ×alora_ratio = 16 (LoRA+ semantics), which on this toy at lr 1e-3 is too
# large: the loss rises. LoRA+ ratios need a matching lower base lr; that is the user's choice to make.
# Dashed: the same fits with `optimized.HinaAdamWOptimizer` (the fused step; run uncompiled here to keep the
# notebook quick: the same code, equivalence_tests/test_hina_equivalence.py checks it compiled too).

# %%
import matplotlib.pyplot as plt
import torch

import optimized
import reference
from reference.dynamic_weight_decay import weight_decay_multiplier

optimized.set_compile(False)


def tam_factors(compat, steps=300):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(256, generator=gen))
    opt = reference.HinaAdamWOptimizer([w], lr=1e-3, compat=compat, use_spd=False)
    out = []
    for t in range(1, steps + 1):
        w.grad = torch.ones(256) + 0.1 * torch.randn(256, generator=gen)
        opt.step()
        a = float(opt.state[w]["momentum_alignment"])
        out.append((1 + a / ((1 - 0.999**t) if compat == "fixed" else 1)) / 2)
    return out


def train_lora(compat, cls=reference.HinaAdamWOptimizer, steps=200):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(48, 4, generator=gen) @ torch.randn(4, 32, generator=gen)
    a = torch.nn.Parameter(torch.randn(4, 32, generator=gen) * 0.1)
    b = torch.nn.Parameter(torch.zeros(48, 4))
    names = ["lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight"]
    opt = cls([{"params": [a, b], "named": names}], lr=1e-3, compat=compat)
    losses = []
    for _ in range(steps):
        loss = ((b @ a - target) ** 2).mean()
        a.grad, b.grad = (g.detach() for g in torch.autograd.grad(loss, [a, b]))
        opt.step()
        losses.append(float(loss))
    return losses


fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
factors = {c: tam_factors(c) for c in ("upstream", "fixed")}
for compat, values in factors.items():
    ax[0].plot(values, label=compat)
ax[0].set(xlabel="step", ylabel="(1 + A)/2", title="TAM damping factor")
ax[0].legend()
steps = range(0, 5001, 50)
for kind in ("lora_a", "lokr_w1", "regular"):
    ax[1].plot(steps, [weight_decay_multiplier(kind, t, 1000, 0.7, 0.1) for t in steps], label=kind)
ax[1].set(xlabel="step", ylabel="m_t", title="dynamic weight decay")
ax[1].legend()
lora = {c: train_lora(c) for c in ("upstream", "fixed")}
fast = {c: train_lora(c, optimized.HinaAdamWOptimizer) for c in ("upstream", "fixed")}
for compat, losses in lora.items():
    line = ax[2].plot(losses, label=compat)[0]
    ax[2].plot(fast[compat], "--", color=line.get_color(), label=f"{compat}, optimized")
ax[2].set(xlabel="step", ylabel="loss", yscale="log", title="rank-4 LoRA fit")
ax[2].legend()
plt.tight_layout()
assert abs(factors["upstream"][0] - 0.5) < 0.01 and factors["fixed"][0] > 0.9
assert lora["upstream"][-1] < lora["upstream"][0] and all(torch.isfinite(torch.tensor(v)).all() for v in lora.values())
assert all(abs(fast[c][-1] - lora[c][-1]) <= 1e-3 * lora[c][-1] for c in lora)
