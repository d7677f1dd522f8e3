"""Blockwise dynamic 8-bit state storage through bitsandbytes (spec T19a).

Paper: Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization",
ICLR 2022, arXiv:2110.02861, Sec. 2.1 (dynamic tree quantisation) and Sec. 2.2 (block-wise
quantisation). A tensor is cut into blocks of B consecutive elements; each block keeps its absmax
N_b = max|x| (fp32), and each element the index of the code value nearest to x/N_b, where the code is
the 256-value signed dynamic map in [−1, 1]. Dequantisation is code[q]·N_b.

The family's `*8bit` classes store states this way with B = 4096 (upstream `_quantize_tensor`). Upstream
keeps bitsandbytes' `QuantState` objects in the state, which `torch.load(weights_only=True)` refuses
[I-11e]; here the state holds plain tensors: the codes `<key>_q` (uint8, the tensor's shape) and the
block absmax `<key>_q_scale` (fp32, one per block). The code table and block size are the same for every
state and are saved once per state_dict (`code_table()`, `BLOCKSIZE`).
"""

from __future__ import annotations

import functools

import bitsandbytes.functional as bnb_functional
import torch

BLOCKSIZE = 4096  # upstream `_quantize_tensor(x, blocksize=4096)`


@functools.cache
def _code_table(device) -> torch.Tensor:
    return bnb_functional.create_dynamic_map(signed=True).to(device=device, dtype=torch.float32)


def code_table(device="cpu") -> torch.Tensor:
    """The signed dynamic tree code (256 values in [−1, 1]) bitsandbytes uses by default (a fresh copy)."""
    return _code_table(torch.device(device)).clone()


def quantize(x: torch.Tensor, blocksize: int = BLOCKSIZE):
    """x → (codes uint8 with x's shape, absmax fp32 [⌈n/B⌉]). Quantises fp32 values of x."""
    x32 = x.detach().to(torch.float32).contiguous()
    if x32.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.uint8, device=x.device), torch.zeros(0, device=x.device)
    codes, quant_state = bnb_functional.quantize_blockwise(x32, blocksize=blocksize)
    return codes, quant_state.absmax.to(torch.float32)


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """(codes, absmax) → fp32 tensor: x̂_i = code[q_i]·N_b(i)."""
    if codes.numel() == 0:
        return torch.zeros(codes.shape, dtype=torch.float32, device=codes.device)
    # x̂_i = code[q_i] · N_b, written out rather than through bitsandbytes so it needs no QuantState
    flat = _code_table(codes.device)[codes.reshape(-1).long()]
    block_of = torch.arange(flat.numel(), device=codes.device) // blocksize
    return (flat * absmax[block_of]).reshape(codes.shape)
