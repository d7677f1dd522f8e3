"""Block min/max uint8 quantisation with error compensation (spec T18; seed 004, design only).

No upstream code exists [I-01]; the spec decisions are implemented: statistics over the real elements
of a short last block (no padding values enter min/max), a constant block stores q = 0 with its zero
point (seed 004's formula divides by zero there [I-50]), fp32 scales and zeros, and standard error
feedback: to store x, quantise x + e and keep the new residual e; a read returns D(q) without e.

    s_b = (max_b − min_b)/255,  z_b = min_b,  q = clamp(round((x − z_b)/s_b), 0, 255),  x̂ = q·s_b + z_b

Error feedback is the compressed-gradient technique of Seide et al. (Interspeech 2014) and
Karimireddy et al. (ICML 2019, arXiv:1901.09847), applied here to optimizer states.
"""

from __future__ import annotations

import torch

LEVELS = 255


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """[n_blocks, B] view; a short last block is padded with its own last element (no new min/max)."""
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.reshape(-1, block_size)


def quantize(x: torch.Tensor, block_size: int):
    """Q_B(x) → (q uint8 of x's shape, scale fp32 [n_blocks], zero fp32 [n_blocks])."""
    flat = x.detach().reshape(-1).float()
    if flat.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=x.device)
        return torch.zeros(x.shape, dtype=torch.uint8, device=x.device), empty, empty.clone()
    blocks = _blocks(flat, block_size)
    lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)
    scale = (hi - lo) / LEVELS
    # q = clamp(round((x − z)/s), 0, 255); a constant block (s = 0) stores q = 0 [I-50]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((blocks - lo[:, None]) / safe[:, None]).clamp(0, LEVELS)
    q = torch.where(scale[:, None] > 0, q, torch.zeros_like(q))
    return q.reshape(-1)[: flat.numel()].to(torch.uint8).reshape(x.shape), scale, lo


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, block_size: int) -> torch.Tensor:
    """x̂ = q·s_b + z_b (fp32, q's shape)."""
    n = q.numel()
    if n == 0:
        return torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    blocks = _blocks(q.reshape(-1).float(), block_size)
    return (blocks * scale[:, None] + zero[:, None]).reshape(-1)[:n].reshape(q.shape)


def error_bound(scale: torch.Tensor) -> torch.Tensor:
    """Per-block round-trip bound: half a quantisation step, s_b/2 (round to nearest)."""
    return scale / 2


def store_with_feedback(x: torch.Tensor, error: torch.Tensor | None, block_size: int):
    """Quantise x + e; return (q, scale, zero, e_new = (x + e) − D(q)). `error=None`: no feedback."""
    target = x.float() if error is None else x.float() + error
    q, scale, zero = quantize(target, block_size)
    if error is None:
        return q, scale, zero, None
    return q, scale, zero, target - dequantize(q, scale, zero, block_size)
