"""ALLoRA row scaling (spec T9a).

Paper: Huang & Balestriero, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
arXiv:2410.09692 (2024): the gradient of each LoRA row is scaled inversely to the row's ℓ2 norm, so
zero-initialised rows move fast and large rows slowly. The exact formula could not be checked here
(papers/ index, 'could not verify'); the family computes ρ_i = 1/sqrt(‖θ_i,:‖₂ + 1/η²).

Improved_8Bit (T9d, `row_variance_scaling`) replaces ρ by a per-step row-variance ratio of the update,
for 2-D parameters marked `_is_lora_layer`; it shares only the name with the paper.

Family variant (T9a): ρ is computed once from the initial weights [I-28] and applied to every 2-D parameter
unless full_finetune. The corrected mode recomputes ρ from the current rows at each step.
"""

from __future__ import annotations

import torch


def allora_row_scaling(theta: torch.Tensor, eta: float) -> torch.Tensor:
    """ρ_i = 1 / sqrt(‖θ_i,:‖₂ + 1/η²), shape [rows, 1]."""
    row_norm = theta.norm(dim=1, keepdim=True)
    return 1.0 / torch.sqrt(row_norm + 1.0 / (eta**2))


def row_variance_scaling(update: torch.Tensor) -> torch.Tensor:
    """T9d: ρ = clamp(rv / (mean(rv) + 1e-8), 0.1, 10), rv = var(U, dim=1, keepdim) (unbiased), shape [rows, 1].
    One column has no variance (upstream: NaN); ρ = 1 then."""
    if update.shape[1] < 2:
        return torch.ones(update.shape[0], 1, dtype=update.dtype, device=update.device)
    row_variance = torch.var(update, dim=1, keepdim=True)
    return torch.clamp(row_variance / (torch.mean(row_variance) + 1e-8), 0.1, 10.0)
