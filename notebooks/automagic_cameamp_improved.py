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
# # Automagic_CameAMP_Improved — dual momentum vs single (optimizers.md O6, techniques.md T15a, T4b, T20–T25)
# Left: the dual momentum's output u' for a constant gradient: it starts at ≈ 7.2·sign(u) (spec T15a) and
# settles as the long-term sum L grows, while single momentum passes u through. Middle: a rank-4 LoRA fit
# (A, B factors) with and without dual momentum, upstream and fixed numerics. Right: the stored TAM state
# of a 2-D parameter: upstream multiplies it by low_rank_emphasis = 1.2 every step, a geometric blow-up
# [I-09]; the fixed mode keeps a bounded scalar cosine.

# %%
import matplotlib.pyplot as plt
import torch

import reference
from reference.dual_momentum import default_alpha, dual_momentum

u = torch.tensor([0.5])
long_term, mixed_sq, trace = torch.zeros(1), torch.zeros(1), []
for _ in range(300):
    x, _, long_term, mixed_sq = dual_momentum(u, long_term, mixed_sq, 0.8, 0.99, 0.99, default_alpha(0.8, 0.99), 1e-30)
    trace.append(float(x))


def train_lora(compat, dual, steps=150):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(48, 4, generator=gen) @ torch.randn(4, 32, generator=gen)
    a = torch.nn.Parameter(torch.randn(4, 32, generator=gen) * 0.1)
    b = torch.nn.Parameter(torch.zeros(48, 4))
    opt = reference.Automagic_CameAMP_Improved(
        [a, b], lr=1e-3, warmup_steps=50, compat=compat, enable_dual_momentum=dual
    )
    losses = []
    for _ in range(steps):
        loss = ((b @ a - target) ** 2).mean()
        a.grad, b.grad = (g.detach() for g in torch.autograd.grad(loss, [a, b]))
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def tam_state(compat, steps=150):
    gen = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(16, 24, generator=gen))
    opt = reference.Automagic_CameAMP_Improved([w], lr=1e-4, warmup_steps=400, compat=compat)
    out = []
    for _ in range(steps):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
        out.append(float(opt.state[w]["s"].abs().max()))
    return out


fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
ax[0].plot(trace, label="dual: u'")
ax[0].axhline(0.5, color="gray", ls="--", label="single: u")
ax[0].set(xlabel="step", ylabel="value", title="dual momentum output, constant u = 0.5")
ax[0].legend()
fits = {(c, d): train_lora(c, d) for c in ("upstream", "fixed") for d in (True, False)}
for (compat, dual), losses in fits.items():
    ax[1].plot(losses, label=f"{compat}, {'dual' if dual else 'single'}")
ax[1].set(xlabel="step", ylabel="loss", yscale="log", title="rank-4 LoRA fit")
ax[1].legend()
states = {c: tam_state(c) for c in ("upstream", "fixed")}
for compat, values in states.items():
    ax[2].plot(values, label=compat)
ax[2].set(xlabel="step", ylabel="max |s|", yscale="log", title="TAM state of a 2-D parameter")
ax[2].legend()
plt.tight_layout()
assert abs(trace[0] - 7.208) < 0.01
assert all(v[-1] < v[0] for v in fits.values()), {k: (v[0], v[-1]) for k, v in fits.items()}
assert states["upstream"][-1] > 1e6 and states["fixed"][-1] <= 1.0
