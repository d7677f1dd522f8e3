"""Per-parameter optimizer states kept as blockwise 8-bit codes (spec T19a, O2 "State", O5 b).

A class that mixes this in reads a state with `_load(state, key)` (fp32, dequantised) and writes it
with `_store(state, key, value)` (quantised), for the keys in `QUANTIZED`. A quantised key `k` lives in
the state as `k_q` (uint8 codes) and `k_q_scale` (fp32 block absmax), upstream's key names; the values
are plain tensors, so `state_dict()` loads with `weights_only=True` [I-11e]. The state_dict also carries
the code table and block size, and `magic8_version = 2`.
"""

from __future__ import annotations

import math
import warnings

import torch

from . import blockwise_8bit
from .checkpoint import check_state_dict
from .checkpoint_layout import as_held
from .sharding import block_scale_span, blocks_cover_chunks, blocks_fit_shards, whole_tensor_load, whole_tensor_save

MAGIC8_VERSION = 2


class Blockwise8bitStates:
    QUANTIZED = ("lr_mask", "exp_avg", "exp_avg_sq", "exp_avg_res", "s", "row_scaling")

    def _quantized(self, key, value) -> bool:
        """Tensors of these keys are stored 8-bit; a 0-d value (fixed-mode TAM s) stays fp32."""
        return (key in self.QUANTIZED or key.startswith("momentum_scale_")) and value.dim() > 0

    def _load(self, state, key) -> torch.Tensor:
        if f"{key}_q" in state:
            return blockwise_8bit.dequantize(state[f"{key}_q"], state[f"{key}_q_scale"])
        return state[key]

    def _store(self, state, key, value: torch.Tensor) -> None:
        if self._quantized(key, value):
            state[f"{key}_q"], state[f"{key}_q_scale"] = blockwise_8bit.quantize(value, exact_zero=self.fixed)
        else:
            state[key] = value

    def _has(self, state, key) -> bool:
        return f"{key}_q" in state or key in state

    def _drop(self, state, key) -> None:
        for name in (f"{key}_q", f"{key}_q_scale", key):
            state.pop(name, None)

    def _shard_fits(self, p, rows: list[int]) -> bool:
        """Under FSDP2 (`reference.sharding`, where a class steps its own shards): whether `p`, whose dim 0 the ranks
        hold in `rows`, may be stepped as this rank's rows. Its blocks must be the whole tensor's (none straddles
        two ranks); ALLoRA's ρ, blocked over the rows, where it is kept, may share a block between ranks, whose
        scale the fast step reduces across them; a tensor else is stepped whole."""
        full_finetune = next(g["full_finetune"] for g in self.param_groups if any(q is p for q in g["params"]))
        keeps_rho = p.dim() == 2 and not full_finetune
        width = math.prod(p.shape[1:])
        return blocks_fit_shards(rows, width, blockwise_8bit.BLOCKSIZE) and (
            not keeps_rho or blocks_cover_chunks(rows, blockwise_8bit.BLOCKSIZE)
        )

    def _block_span(self, p, key: str, first: int, count: int):
        """(whole length, first, count) of the block scales `key` of `p` that this rank holds, whose rows
        [first, first + count) it holds (the blocks it holds rows of); None for a state indexed by p's rows."""
        if not key.endswith("_q_scale"):
            return None
        return block_scale_span(p, first, count, blockwise_8bit.BLOCKSIZE, by_rows=key == "row_scaling_q_scale")

    @whole_tensor_save
    def state_dict(self):
        sd = self._state_dict()
        sd["magic8_version"] = MAGIC8_VERSION
        sd["quant_code"] = blockwise_8bit.code_table()
        sd["quant_blocksize"] = blockwise_8bit.BLOCKSIZE
        sd["optimizer"] = type(self).__name__
        return sd

    @whole_tensor_load
    def load_state_dict(self, state_dict):
        state_dict = as_held(self, state_dict)
        check_state_dict(self, state_dict)
        if state_dict.get("magic8_version", 0) < MAGIC8_VERSION:
            warnings.warn("loaded a state dict without magic8_version=2; 8-bit states may be missing", stacklevel=2)
        code = state_dict.get("quant_code")
        if code is not None and not torch.equal(code.cpu(), blockwise_8bit.code_table()):
            raise ValueError("state_dict['quant_code'] differs from this version's 8-bit code table")
        blocksize = state_dict.get("quant_blocksize", blockwise_8bit.BLOCKSIZE)
        if blocksize != blockwise_8bit.BLOCKSIZE:
            raise ValueError(f"state_dict['quant_blocksize'] is {blocksize}, expected {blockwise_8bit.BLOCKSIZE}")
        extra = ("magic8_version", "quant_code", "quant_blocksize", "optimizer")
        self._load_state_dict({k: v for k, v in state_dict.items() if k not in extra})
