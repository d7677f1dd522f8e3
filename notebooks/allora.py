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
# # ALLoRA row scaling (spec T9a)
# Huang & Balestriero, arXiv:2410.09692: scale each LoRA row's LR inversely to its norm, so zero-initialised
# rows (LoRA B) start fast. The family: ρ_i = 1/sqrt(‖θ_i‖ + 1/η²), computed once upstream [I-28] and
# from the current rows in the fixed mode.

# %%
import matplotlib.pyplot as plt
import torch

from reference.allora import allora_row_scaling

norms = torch.linspace(0, 4, 200)
for eta in (1.0, 2.0, 4.0):
    theta = norms.view(-1, 1) * torch.nn.functional.one_hot(torch.zeros(200, dtype=torch.long), 8).float()
    plt.plot(norms, allora_row_scaling(theta, eta).flatten(), label=f"η = {eta}")
plt.xlabel("row norm ‖θ_i‖")
plt.ylabel("ρ_i")
plt.title("a zero row gets ρ = η")
plt.legend()
plt.show()
assert float(allora_row_scaling(torch.zeros(3, 5), 2.0)[0]) == 2.0
