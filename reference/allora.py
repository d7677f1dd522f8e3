"""ALLoRA row scaling (spec T9a).

Paper: Huang & Balestriero, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
arXiv:2410.09692 (2024): the gradient of each LoRA row is scaled inversely to the row's ℓ2 norm, so
zero-initialised rows move fast and large rows slowly. The exact formula could not be checked here
(papers/ index, 'could not verify'); the family computes ρ_i = 1/sqrt(‖θ_i,:‖₂ + 1/η²).

Family variant: ρ is computed once from the initial weights [I-28] and applied to every 2-D parameter
unless full_finetune. The corrected mode recomputes ρ from the current rows at each step.
"""

from __future__ import annotations

import torch


def allora_row_scaling(theta: torch.Tensor, eta: float) -> torch.Tensor:
    """ρ_i = 1 / sqrt(‖θ_i,:‖₂ + 1/η²), shape [rows, 1]."""
    row_norm = theta.norm(dim=1, keepdim=True)
    return 1.0 / torch.sqrt(row_norm + 1.0 / (eta**2))
