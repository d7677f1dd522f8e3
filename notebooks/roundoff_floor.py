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
# # The round-off floor (corrected mode, no paper; issue 29)
# A normalised update does not depend on the gradient's magnitude, so a gradient element that is only
# round-off takes a full step. In every attention layer the key bias has an exactly-zero true gradient
# (softmax ignores a shift shared by all keys); autograd returns ~1e-11. Below, a tiny GPT-2's key bias
# (initialised to 0) under upstream's numerics and under the corrected mode, whose floor
# (`reference.roundoff_floor`, 2⁻²⁰ of the group's mean |g|) reads such elements as 0.

# %%
import matplotlib.pyplot as plt
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

import reference

logging.set_verbosity_error()


def key_bias_history(compat, steps=30):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=64))
    opt = reference.Automagic_CameAMP(model.parameters(), lr=1e-3, warmup_steps=10, compat=compat)
    gen = torch.Generator().manual_seed(1)
    bias, history = model.transformer.h[0].attn.c_attn.bias, []
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 16), generator=gen)
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        history.append((bias[32:64].abs().max().item(), bias[:32].abs().mean().item()))
    return history


histories = {compat: key_bias_history(compat) for compat in ("upstream", "fixed")}
for compat, history in histories.items():
    print(f"{compat:8s} max |b_k| {history[-1][0]:.2e}   mean |b_q| {history[-1][1]:.2e}")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for compat, history in histories.items():
    ax.plot([k for k, _ in history], label=f"{compat}: max |b_k|")
ax.plot([q for _, q in histories["fixed"]], "k--", label="fixed: mean |b_q|")
ax.set_xlabel("step")
ax.set_yscale("symlog", linthresh=1e-9)
ax.legend()
plt.show()
assert histories["fixed"][-1][0] == 0.0 and histories["upstream"][-1][0] > 1e-4
