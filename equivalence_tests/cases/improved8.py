"""Automagic_CameAMP_Improved_8Bit cases (O7): kwargs, shapes, runs and bounds."""

from __future__ import annotations

import torch

import optimized
import reference

from ..harness import make_partner, record_state_errors
from ..tolerances import FREE_RUNNING_8BIT_FP32, free_running_tolerance
from .improved import drive
from .improved import make_params as improved_params

MASK = dict(lr=1e-3)


CASES = {
    "defaults, W 8, 8-bit from 256 elements": dict(MASK, warmup_steps=8, min_8bit_size=256),
    "came=False, no edge/frequency/spatial, wd 1e-2, force_8bit": dict(
        MASK,
        warmup_steps=6,
        came=False,
        edge_suppression=False,
        frequency_penalty=0.0,
        spatial_awareness=False,
        weight_decay=1e-2,
        force_8bit=True,
        betas=(0.9, 0.95, 0.99),
    ),
    "edges fire, frequency 0.2, no rank penalty, adaptation 0.5": dict(
        MASK,
        warmup_steps=6,
        edge_threshold=0.01,
        edge_penalty=0.5,
        frequency_penalty=0.2,
        lora_rank_penalty=False,
        adaptation_rate=0.5,
        min_8bit_size=256,
    ),
}


MATRIX = [(case, compat, dtype) for case in CASES for compat in ("upstream", "fixed")
          for dtype in (torch.float32, torch.bfloat16)]  # fmt: skip


LORA = {0: True, 3: False}  # parameter index → its `_is_lora_layer`


# compiled on fewer shapes (a graph per phase and stack class, ~15 s each on two cold cores): `make test`
# compiles the first case on two stacks of two LoRA matrices (conftest.py), `make verify` every case and both
# compiled combinations on every class here (upstream bf16 stacks run uncompiled)
COMPILED_SHAPES = [(16, 24), (16, 24), (100, 120), (37,), (8192,), ()]  # (8192,): whole blocks, a reshape


MAKE_TEST_COMPILED_SHAPES = [(16, 24), (16, 24), (24, 16), (24, 16)]


MAKE_TEST_COMPILED_LORA = dict.fromkeys(range(4), True)  # one stack class: a graph per phase, three in all


COMPILED = [("upstream", torch.float32), ("fixed", torch.bfloat16)]


def make_params(dtype, shapes=None, lora=None):
    params = improved_params(dtype, shapes=shapes)
    for i, flag in (LORA if lora is None else lora).items():
        params[i]._is_lora_layer = flag
    return params


def build(case, dtype, compat, shapes=None, lora=None, partner=optimized):
    ref_params = make_params(dtype, shapes, lora)
    opt_params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    for a, b in zip(ref_params, opt_params, strict=True):
        if hasattr(a, "_is_lora_layer"):
            b._is_lora_layer = a._is_lora_layer
    ref = reference.Automagic_CameAMP_Improved_8Bit(ref_params, compat=compat, **CASES[case])
    opt = make_partner(partner, "Automagic_CameAMP_Improved_8Bit", opt_params, compat=compat, **CASES[case])
    return ref, opt, ref_params, opt_params


def run(case, dtype, compat, lockstep: bool, shapes=None, lora=None, partner=optimized) -> dict:
    """Worst error per compared quantity; lockstep re-syncs the optimized optimizer to the reference.
    `shapes`, `lora`: other parameters, and which carry `_is_lora_layer` (index → value); `partner`: see
    harness.build."""
    record = record_state_errors if lockstep else None
    return drive(*build(case, dtype, compat, shapes, lora, partner), dtype, record)


def free_running_bound(dtype) -> float:
    return (FREE_RUNNING_8BIT_FP32 if dtype == torch.float32 else free_running_tolerance(dtype)).bound
