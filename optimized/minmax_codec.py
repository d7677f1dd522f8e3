"""Seed 004's block min/max uint8 codec with error feedback on a stack of same-shape tensors (spec T18;
readable twin: reference.minmax_8bit), traceable into a compiled step.

A state `k` of a stack of c tensors is stored, as the reference stores it per tensor, as `k_q` (uint8,
[c, *shape]), `k_scale` and `k_zero` (fp32, [c, n_blocks]) and, with error feedback, `k_err` (fp32,
[c, *shape]), in the blocks of optimized.stack_blocks: a `QState`, read and written through the codec interface
`load`/`store` (optimized.codec's; `held` finds it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from reference.minmax_8bit import LEVELS

from .stack_blocks import BlockIndex, rows

PARTS = ("q", "scale", "zero", "err")


class QState(NamedTuple):
    q: torch.Tensor  # uint8 [c, *shape]
    scale: torch.Tensor  # fp32 [c, n_blocks]: s_b
    zero: torch.Tensor  # fp32 [c, n_blocks]: z_b
    err: torch.Tensor | None  # fp32 [c, *shape]: the error fed back (None: no feedback)


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


def held(st: dict, key: str):
    """State `key` of a stack's state dict as the codec interface takes it: a QState, or the plain tensor."""
    if f"{key}_q" not in st:
        return st[key]
    return QState(st[f"{key}_q"], st[f"{key}_scale"], st[f"{key}_zero"], st.get(f"{key}_err"))


def load(state, ix: BlockIndex) -> torch.Tensor:
    """The codec interface's read: a QState de-quantised (without its error, as the reference reads it), or a
    plain state as stored."""
    return dequantize(state.q, state.scale, state.zero, ix) if isinstance(state, QState) else state


def store(state, value: torch.Tensor, ix: BlockIndex) -> None:
    """The codec interface's write: a plain state copied into; a QState q ← Q(x + e), e ← (x + e) − D(q) with
    feedback, else q ← Q(x)."""
    if not isinstance(state, QState):
        state.copy_(value)
        return
    target = value.float() if state.err is None else value.float() + state.err
    q, scale, zero = _write_codes(state, target, ix)
    if state.err is not None:
        state.err.copy_(target - dequantize(q, scale, zero, ix))


def _write_codes(state: QState, value: torch.Tensor, ix: BlockIndex):
    """q, s, z ← Q(value) into the state's parts; returns them."""
    q, scale, zero = quantize(value, ix)
    state.q.copy_(q)
    state.scale.copy_(scale)
    state.zero.copy_(zero)
    return q, scale, zero


def fold_errors(st: dict, keys, ix: BlockIndex) -> None:
    """The periodic sync (spec O8): x ← D(Q(D(q) + e)), e ← 0, for each quantised key with an error."""
    for key in keys:
        if f"{key}_err" in st:
            state = held(st, key)
            _write_codes(state, load(state, ix) + state.err, ix)
            state.err.zero_()
