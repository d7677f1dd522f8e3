"""The "frequency penalty" of the Improved classes (spec T21). No paper: a heuristic [I-35].

T21a (S2o, S3), `fft_penalty`: P = Re(ifft2(|fft2(x)| ⊙ 1[D > 0.3·min(h, w)])), with D the distance
to bin (h//2, w//2). There is no fftshift, so that bin is the Nyquist corner and the mask drops only
the highest frequencies; |·| drops the phase, so P is not aligned with x.
T21b (S2, the Improved class), `finite_difference_penalty`: R = |Δ_w x| + |Δ_h x| (each added to the
later element), a non-negative bias; the class subtracts frequency_penalty·R from the gradient.
Both are defined for 2-D tensors only (zeros otherwise).
"""

from __future__ import annotations

import torch

HIGH_FREQUENCY_RADIUS = 0.3  # mask radius as a fraction of min(h, w)


def fft_penalty(x: torch.Tensor) -> torch.Tensor:
    """T21a. Returns a real tensor of x's shape: fp64 for fp64 input, else fp32 (torch has no half-precision
    FFT on CPU, where upstream raises; a bf16/fp16 input is transformed in fp32)."""
    if x.dim() != 2:
        return torch.zeros_like(x)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    h, w = x.shape
    # A = |fft2(x)|
    magnitude = torch.fft.fft2(x).abs()
    # D[y, x] = √((y − h//2)² + (x − w//2)²);  mask = 1[D > 0.3·min(h, w)]
    y, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    distance = torch.sqrt((y - h // 2) ** 2 + (xs - w // 2) ** 2)
    mask = (distance > min(h, w) * HIGH_FREQUENCY_RADIUS).float()
    # P = Re(ifft2(A ⊙ mask))
    return torch.real(torch.fft.ifft2(magnitude * mask))


def finite_difference_penalty(x: torch.Tensor) -> torch.Tensor:
    """T21b. R[:, 1:] += |x[:, 1:] − x[:, :−1]|;  R[1:, :] += |x[1:, :] − x[:−1, :]|."""
    penalty = torch.zeros_like(x)
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return penalty
    penalty[:, 1:] += (x[:, 1:] - x[:, :-1]).abs()
    penalty[1:, :] += (x[1:, :] - x[:-1, :]).abs()
    return penalty
