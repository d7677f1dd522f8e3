"""Seed 004's block min/max uint8 codec with error feedback on a stack of same-shape tensors (spec T18;
readable twin: reference.minmax_8bit), traceable into a compiled step.

A state `k` of a stack of c tensors is stored, as the reference stores it per tensor, as `k_q` (uint8,
[c, *shape]), `k_scale` and `k_zero` (fp32, [c, n_blocks]) and, with error feedback, `k_err` (fp32,
[c, *shape]), in the blocks of optimized.stack_blocks.
"""

from __future__ import annotations

import torch

from reference.minmax_8bit import LEVELS

from .stack_blocks import BlockIndex, rows

PARTS = ("q", "scale", "zero", "err")


def quantize(x: torch.Tensor, ix: BlockIndex):
    """Q_B(x[i]) for each i → (q uint8 [c, *shape], scale [c, n_blocks], zero [c, n_blocks])."""
    flat = rows(x.float())
    blocks = flat[:, ix.gather]
    lo, hi = blocks.amin(dim=2), blocks.amax(dim=2)
    # s_b = (max_b − min_b)/255, z_b = min_b
    scale = (hi - lo) / LEVELS
    # q = clamp(round((x − z_b)/s_b), 0, 255); a constant block (s_b = 0) stores q = 0
    s, z = scale[:, ix.block_of], lo[:, ix.block_of]
    q = torch.round((flat - z) / torch.where(s > 0, s, 1.0)).clamp(0, LEVELS)
    q = torch.where(s > 0, q, 0.0)
    return q.to(torch.uint8).reshape(x.shape), scale, lo


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, ix: BlockIndex) -> torch.Tensor:
    """x̂ = q·s_b + z_b (fp32, q's shape)."""
    return (rows(q).float() * scale[:, ix.block_of] + zero[:, ix.block_of]).reshape(q.shape)


def is_quantized(st: dict, key: str) -> bool:
    return f"{key}_q" in st


def load(st: dict, key: str, ix: BlockIndex) -> torch.Tensor:
    """State `key` of the stack: de-quantised (without its error, as the reference reads it) or as stored."""
    if is_quantized(st, key):
        return dequantize(st[f"{key}_q"], st[f"{key}_scale"], st[f"{key}_zero"], ix)
    return st[key]


def store(st: dict, key: str, value: torch.Tensor, ix: BlockIndex) -> None:
    """Write state `key` in place. Quantised: q ← Q(x + e), e ← (x + e) − D(q) with feedback, else q ← Q(x).
    An unquantised state takes the value's dtype, as the reference's `state[key] = value` does (upstream
    bf16: a state computed from an fp32 term becomes fp32); then `st[key]` is rebound, not written."""
    if not is_quantized(st, key):
        if st[key].dtype == value.dtype:
            st[key].copy_(value)
        else:
            st[key] = value
        return
    target = value.float()
    if f"{key}_err" in st:
        target = target + st[f"{key}_err"]
    q, scale, zero = _write_codes(st, key, target, ix)
    if f"{key}_err" in st:
        st[f"{key}_err"].copy_(target - dequantize(q, scale, zero, ix))


def _write_codes(st: dict, key: str, value: torch.Tensor, ix: BlockIndex):
    """q, s, z ← Q(value) into the state's parts; returns them."""
    q, scale, zero = quantize(value, ix)
    st[f"{key}_q"].copy_(q)
    st[f"{key}_scale"].copy_(scale)
    st[f"{key}_zero"].copy_(zero)
    return q, scale, zero


def fold_errors(st: dict, keys, ix: BlockIndex) -> None:
    """The periodic sync (spec O8): x ← D(Q(D(q) + e)), e ← 0, for each quantised key with an error."""
    for key in keys:
        if f"{key}_err" in st:
            _write_codes(st, key, load(st, key, ix) + st[f"{key}_err"], ix)
            st[f"{key}_err"].zero_()
