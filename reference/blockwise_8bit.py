"""Blockwise dynamic 8-bit state storage through bitsandbytes (spec T19a).

Paper: Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization",
ICLR 2022, arXiv:2110.02861, Sec. 2.1 (dynamic tree quantisation) and Sec. 2.2 (block-wise
quantisation). A tensor is cut into blocks of B consecutive elements; each block keeps its absmax
N_b = max|x| (fp32), and each element the index of the code value nearest to x/N_b, where the code is
the 256-value signed dynamic map in [−1, 1]. Dequantisation is code[q]·N_b.

The code and the quantiser are also written out here, readable (`dynamic_tree_code`, `quantize_readable`):
  * the signed dynamic tree code (paper Sec. 2.1, Fig. 2): after the sign bit, k zero bits give the decade
    10^−k (k = 0…6), an indicator bit ends them, and the remaining 6 − k bits split [0.1, 1] into 2^(6−k)
    equal bins whose midpoints are the magnitudes; plus 0 and 1. 2·127 + 2 = 256 values, sorted;
  * paper: each x/N_b goes to the nearest code value (`nearest_code_index`);
  * bitsandbytes ≥ 0.50 on the CPU (the oracle) looks the nearest code up in a 2^16-bin table instead: the
    normalised v ∈ [−1, 1] goes to bin k = ⌊(v + 1)/2 · 65535 + ½⌋, and bin k holds the code nearest to
    its centre 2k/65535 − 1 (`table_code_index`; read off bitsandbytes by quantising every bin centre).
    The two differ by one code where v is within half a bin (1.5e-5) of a midpoint between codes, and by
    up to a few codes near 0, where bins are wider than the code spacing (v = 0 maps to 2.1e-5, not to 0).
    An all-zero block (N_b = 0) gets code 0 (−0.993), which dequantises to 0.
  * the corrected mode stores an exact 0 as the code of 0 (`quantize(..., exact_zero=True)`, index ZERO_CODE),
    as the nearest-code rule (and bitsandbytes' GPU kernel) does. The CPU table's 2.1e-5·N_b would make a
    state that is exactly 0 (the momentum of an element whose gradient is 0, see reference.roundoff_floor)
    decode as 2.1e-5·N_b every step, and a normalised step (m/√r, where r is as small) then moves it.
`quantize_readable(x, B)` with the table is bit-identical to `bitsandbytes.functional.quantize_blockwise` on
the CPU (equivalence_tests/test_papers_reference.py, block sizes 64–4096).

The family's `*8bit` classes store states this way with B = 4096 (upstream `_quantize_tensor`). Upstream
keeps bitsandbytes' `QuantState` objects in the state, which `torch.load(weights_only=True)` refuses
[I-11e]; here the state holds plain tensors: the codes `<key>_q` (uint8, the tensor's shape) and the
block absmax `<key>_q_scale` (fp32, one per block). The code table and block size are the same for every
state and are saved once per state_dict (`code_table()`, `BLOCKSIZE`).
"""

from __future__ import annotations

import functools
import logging

import torch


@functools.cache
def bnb_functional():
    """bitsandbytes.functional, imported at first use (it takes ~2.5 s: it imports inductor) and without its
    CPU backend's import-time warning: on AVX-512-BF16 machines it logs that its optional 4-bit GEMM kernel (the
    `kernels` package) is missing, which 8-bit optimizer states never use. Importing our package prints nothing."""
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as functional
    finally:
        quiet.setLevel(level)
    return functional


BLOCKSIZE = 4096  # upstream `_quantize_tensor(x, blocksize=4096)`
ZERO_CODE = 127  # the index of 0.0 in the signed dynamic tree code


@functools.cache
def _code_table(device) -> torch.Tensor:
    return bnb_functional().create_dynamic_map(signed=True).to(device=device, dtype=torch.float32)


def code_table(device="cpu") -> torch.Tensor:
    """The signed dynamic tree code (256 values in [−1, 1]) bitsandbytes uses by default (a fresh copy)."""
    return _code_table(torch.device(device)).clone()


def quantize(x: torch.Tensor, blocksize: int = BLOCKSIZE, exact_zero: bool = False):
    """x → (codes uint8 with x's shape, absmax fp32 [⌈n/B⌉]). Quantises fp32 values of x; `exact_zero` (the
    corrected mode): an element that is exactly 0 in a block that is not all 0 gets ZERO_CODE."""
    x32 = x.detach().to(torch.float32).contiguous()
    if x32.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.uint8, device=x.device), torch.zeros(0, device=x.device)
    codes, quant_state = bnb_functional().quantize_blockwise(x32, blocksize=blocksize)
    absmax = quant_state.absmax.to(torch.float32)
    if exact_zero:
        n_b = absmax.repeat_interleave(blocksize)[: x32.numel()].view(x32.shape)
        codes = torch.where((x32 == 0) & (n_b > 0), ZERO_CODE, codes).to(torch.uint8)
    return codes, absmax


def zero_code(exact_zero: bool) -> int:
    """The code index `quantize` gives an exact 0 in a block that is not all 0."""
    return ZERO_CODE if exact_zero else int(table_code_index(torch.tensor(0.0)))


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """(codes, absmax) → fp32 tensor: x̂_i = code[q_i]·N_b(i)."""
    if codes.numel() == 0:
        return torch.zeros(codes.shape, dtype=torch.float32, device=codes.device)
    # x̂_i = code[q_i] · N_b, written out rather than through bitsandbytes so it needs no QuantState
    flat = _code_table(codes.device)[codes.reshape(-1).long()]
    block_of = torch.arange(flat.numel(), device=codes.device) // blocksize
    return (flat * absmax[block_of]).reshape(codes.shape)


TABLE_BINS = 65536  # bitsandbytes' CPU lookup table


def dynamic_tree_code() -> torch.Tensor:
    """The signed 8-bit dynamic tree code, 256 sorted fp32 values in [−1, 1] (equal to bitsandbytes'
    `create_dynamic_map(signed=True)`)."""
    values = [torch.tensor([0.0, 1.0])]
    for k in range(7):  # decade 10^−k keeps 6 − k linear bits
        edges = torch.linspace(0.1, 1.0, 2 ** (6 - k) + 1, dtype=torch.float32)
        magnitudes = (edges[:-1] + edges[1:]) / 2.0 * 10.0**-k  # bin midpoints, scaled to the decade
        values += [magnitudes, -magnitudes]
    return torch.sort(torch.cat(values)).values


def nearest_code_index(v: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Paper: the index of the code value nearest to v (the lower index on a tie)."""
    return torch.argmin((v.unsqueeze(-1) - code).abs(), dim=-1)


@functools.cache
def _table(device) -> torch.Tensor:
    centres = torch.arange(TABLE_BINS, dtype=torch.float64) / (TABLE_BINS - 1) * 2 - 1
    return nearest_code_index(centres, dynamic_tree_code().double()).to(device)


def code_lookup_table(device="cpu") -> torch.Tensor:
    """The 2^16-bin table of `table_code_index` (uint8 code indices), for kernels that index it themselves."""
    return _table(torch.device(device)).to(torch.uint8)


def table_code_index(v: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' CPU rule: bin k = ⌊(v + 1)/2 · 65535 + ½⌋ (fp32), then the code nearest to the bin centre."""
    k = (((v + 1) * 0.5) * (TABLE_BINS - 1) + 0.5).to(torch.int64)
    return _table(v.device)[k]


def quantize_readable(x: torch.Tensor, blocksize: int = BLOCKSIZE, rule: str = "table"):
    """x → (codes uint8 with x's shape, absmax fp32 [⌈n/B⌉]): N_b = max|x| over each block of B consecutive
    elements, v = x/N_b, and the code index of v by `rule` ("table": bitsandbytes' CPU; "nearest": paper)."""
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    # N_b = max_{i ∈ b} |x_i|  (the last block may be shorter)
    absmax = torch.stack([block.abs().max() for block in flat.split(blocksize)]) if n else flat.new_zeros(0)
    # v_i = x_i / N_b(i) ∈ [−1, 1]; an all-zero block gives 0/0, taken as −1 (code 0), as bitsandbytes does
    v = (flat / absmax.repeat_interleave(blocksize)[:n]).nan_to_num(nan=-1.0).clamp(-1.0, 1.0)
    index = table_code_index(v) if rule == "table" else nearest_code_index(v, dynamic_tree_code().to(v.device))
    return index.to(torch.uint8).reshape(x.shape), absmax
