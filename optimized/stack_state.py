"""A stack step's reads and writes of its states by key, through a codec (optimized.stack_codec or
optimized.minmax_codec; both implement the codec interface `held`/`load`/`store`)."""

from __future__ import annotations

import torch


def load(st: dict, key: str, codec, blocks) -> torch.Tensor:
    """State `key` of the stack: de-quantised (fp32), or as stored."""
    return codec.load(codec.held(st, key), blocks)


def store(st: dict, key: str, value: torch.Tensor, codec, blocks) -> None:
    """Write state `key` in place. A plain state of another dtype than the value is rebound to it instead, as
    the reference's `state[key] = value` does (upstream bf16: a state computed from an fp32 term becomes fp32);
    the class takes the rebinding up afterwards (shape_stack.ShapeStack.take_rebound)."""
    state = codec.held(st, key)
    if torch.is_tensor(state) and state.dtype != value.dtype:
        st[key] = value
    else:
        codec.store(state, value, blocks)


def is_quantized(st: dict, key: str) -> bool:
    return f"{key}_q" in st
