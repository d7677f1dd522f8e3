"""ALLoRA: the paper's gradient rescaling (`ALLoRALinear`) and the family's row scaling (spec T9a).

Paper: Huang & Balestriero, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
arXiv:2410.09692 (2024). Abstract [verified]: LoRA without dropout and without the α/r output scale; the
per-sample, per-parameter gradients are scaled by a coefficient inversely proportional to the
parameters' ℓ2 norm.

The paper's rule (its Sec. 4.2 definition, as quoted by a third-party implementation; the method
section itself could not be read here, see papers/index.json): with the adapter's output y = B A x
(A: [r, in], B: [out, r]), the gradient reaching row i of the product BA is divided by
    √(‖(BA)_i,:‖₂ + 1/η²)                                              (η: the former α/r)
and only the gradients of A and B are rescaled; the gradient passed back to x is not. Since row i of
∂L/∂(BA) is δ_i xᵀ, this equals scaling the output gradient δ row-wise before forming ∂L/∂A and ∂L/∂B
(`_RescaledProduct`). At B = 0 every row gets η: the first step is plain LoRA's with scale η.

Family variant (T9a, `allora_row_scaling`): ρ_i = 1/√(‖θ_i,:‖₂ + 1/η²) from the rows of each 2-D
parameter itself (A and B separately, not their product), multiplied into the learning rate rather
than the gradient, computed once from the initial weights [I-28] (the corrected mode recomputes it each
step) and applied to every 2-D parameter unless full_finetune.

Improved_8Bit (T9d, `row_variance_scaling`) replaces ρ by a per-step row-variance ratio of the update,
for 2-D parameters marked `_is_lora_layer`; it shares only the name with the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def allora_row_scaling(theta: torch.Tensor, eta: float) -> torch.Tensor:
    """ρ_i = 1 / sqrt(‖θ_i,:‖₂ + 1/η²), shape [rows, 1]."""
    row_norm = theta.norm(dim=1, keepdim=True)
    return 1.0 / torch.sqrt(row_norm + 1.0 / (eta**2))


def allora_row_scaling_fixed(theta: torch.Tensor, eta: float) -> torch.Tensor:
    """ρ as the corrected mode recomputes it each step [I-28]: in float64, rounded to float32 once. Any two
    summation orders then give the same float32 ρ (bar a float64 tie), so an 8-bit ρ, quantised before it is
    used, gets the same code in every implementation and on every CPU."""
    return allora_row_scaling(theta.detach().double(), eta).float()


def row_variance_scaling(update: torch.Tensor) -> torch.Tensor:
    """T9d: ρ = clamp(rv / (mean(rv) + 1e-8), 0.1, 10), rv = var(U, dim=1, keepdim) (unbiased), shape [rows, 1].
    One column has no variance (upstream: NaN); ρ = 1 then."""
    if update.shape[1] < 2:
        return torch.ones(update.shape[0], 1, dtype=update.dtype, device=update.device)
    row_variance = torch.var(update, dim=1, keepdim=True)
    return torch.clamp(row_variance / (torch.mean(row_variance) + 1e-8), 0.1, 10.0)


def output_row_scale(lora_a: torch.Tensor, lora_b: torch.Tensor, eta: float) -> torch.Tensor:
    """s_i = 1/√(‖(BA)_i,:‖₂ + 1/η²), shape [out]."""
    return 1.0 / torch.sqrt((lora_b @ lora_a).norm(dim=1) + 1.0 / eta**2)


class _RescaledProduct(torch.autograd.Function):
    """y = x Aᵀ Bᵀ; backward: ∂L/∂x from δ, ∂L/∂A and ∂L/∂B from δ·s (s = `output_row_scale`)."""

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, eta):
        ctx.save_for_backward(x, lora_a, lora_b)
        ctx.eta = eta
        return x @ lora_a.T @ lora_b.T

    @staticmethod
    def backward(ctx, delta):
        x, lora_a, lora_b = ctx.saved_tensors
        grad_x = delta @ lora_b @ lora_a if ctx.needs_input_grad[0] else None
        # δ̃ = δ ⊙ s (row i of BA ↔ output channel i), batch dimensions flattened
        scaled = (delta * output_row_scale(lora_a, lora_b, ctx.eta)).reshape(-1, delta.shape[-1])
        flat_x = x.reshape(-1, x.shape[-1])
        # ∂L/∂A = Bᵀ δ̃ᵀ x,  ∂L/∂B = δ̃ᵀ (x Aᵀ)
        grad_a = (scaled @ lora_b).T @ flat_x if ctx.needs_input_grad[1] else None
        grad_b = scaled.T @ (flat_x @ lora_a.T) if ctx.needs_input_grad[2] else None
        return grad_x, grad_a, grad_b, None


class ALLoRALinear(nn.Module):
    """A frozen `base` linear layer plus the ALLoRA adapter: y = base(x) + B A x, no dropout, no α/r
    scale; A's and B's gradients rescaled per output row as in the module docstring. A is initialised
    as LoRA's (Kaiming-uniform, a = √5) and B = 0."""

    def __init__(self, base: nn.Linear, rank: int, eta: float):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not eta > 0:
            raise ValueError(f"eta must be positive, got {eta!r}")
        self.base, self.eta = base, float(eta)
        base.requires_grad_(False)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + _RescaledProduct.apply(x, self.lora_a, self.lora_b, self.eta)
