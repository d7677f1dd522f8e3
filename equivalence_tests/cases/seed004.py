"""Seed 004's Automagic_CameAMP_8Bit cases (O8): kwargs, shapes, runs and bounds."""

from __future__ import annotations

import torch

import optimized
import reference
from reference import minmax_8bit

from ..harness import compare_states, make_partner
from ..tolerances import (
    FREE_RUNNING_MINMAX_FP32,
    LOCKSTEP_MINMAX_CODE_STEPS,
    LOCKSTEP_MINMAX_CODE_STEPS_BF16_UPSTREAM,
    LOCKSTEP_MINMAX_NO_FEEDBACK,
    free_running_tolerance,
    lockstep_tolerance,
)
from .improved import MASK, drive, make_params

# the Improved test's parameters (test_improved_equivalence.make_params): at B = 256 the 384-element matrices
# are one full block and a short one, and (4, 3, 3, 3) and smaller stay unquantised
CASES = {
    "defaults, W 8, B 64, sync 5": dict(MASK, warmup_steps=8, block_size=64, sync_frequency=5),
    "no came/edge/spatial/background, rank penalty, β3 0.99": dict(
        MASK,
        warmup_steps=6,
        came=False,
        edge_suppression=False,
        spatial_awareness=False,
        background_regularization=False,
        betas=(0.9, 0.95, 0.99),
    ),
    "mask and Vs quantised, edges fire, no rank penalty": dict(
        MASK,
        warmup_steps=6,
        mixed_precision=False,
        edge_threshold=0.01,
        edge_penalty=0.5,
        lora_rank_penalty=False,
        sync_frequency=4,
    ),
    "no error feedback, B 128": dict(MASK, warmup_steps=6, block_size=128, error_correction=False),
}


MATRIX = [(case, compat, dtype) for case in CASES for compat in ("upstream", "fixed")
          for dtype in (torch.float32, torch.bfloat16)]  # fmt: skip


# compiled on fewer shapes: each stack class (ndim, which states are quantised, one tensor or several) is a
# graph per phase, ~15 s each on two cold cores. `make test` compiles the first combination on two stacks of
# two matrices (one class, three graphs; conftest.py), `make verify` both combinations for every case, and
# the first case on every class here (upstream bf16 stacks run uncompiled)
COMPILED_SHAPES = [(16, 24), (16, 24), (100, 120), (300,), ()]


MAKE_TEST_COMPILED_SHAPES = [(16, 24), (16, 24), (24, 16), (24, 16)]


COMPILED = [("upstream", torch.float32), ("fixed", torch.bfloat16)]


def build(case, dtype, compat, shapes=None, partner=optimized):
    ref_params = make_params(dtype, shapes=shapes)
    opt_params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    ref = reference.Automagic_CameAMP_8Bit(ref_params, compat=compat, **CASES[case])
    opt = make_partner(partner, "Automagic_CameAMP_8Bit", opt_params, compat=compat, **CASES[case])
    return ref, opt, ref_params, opt_params


def effective(state_dict, block_size: int) -> dict:
    """A state_dict with each quantised state's parts replaced by its effective value D(q) + e."""
    parts = tuple(f"_{p}" for p in ("q", "scale", "zero", "err"))
    state = {}
    for pid, saved in state_dict["state"].items():
        state[pid] = {k: v for k, v in saved.items() if not k.endswith(parts)}
        for key in (k[:-2] for k in saved if k.endswith("_q")):
            value = minmax_8bit.dequantize(saved[f"{key}_q"], saved[f"{key}_scale"], saved[f"{key}_zero"], block_size)
            state[pid][key] = value + saved[f"{key}_err"] if f"{key}_err" in saved else value
    return {"state": state}


def code_steps(ref_sd, opt_sd, block_size: int) -> float:
    """The largest difference of two runs' de-quantised states D(q), in code steps of the reference's block:
    ≤ 1 where a code flipped at a rounding edge. A block whose range is round-off itself (step s_b below
    8 ulps of its values, e.g. the residual's first step, ≈ ε2 everywhere) counts in those ulps."""
    worst = 0.0
    ulp = torch.finfo(torch.float32).eps
    for pid, saved in ref_sd["state"].items():
        other = opt_sd["state"][pid]
        for key in (k[:-2] for k in saved if k.endswith("_q")):
            parts = [saved[f"{key}_{p}"] for p in ("q", "scale", "zero")]
            a = minmax_8bit.dequantize(*parts, block_size).reshape(-1)
            b = minmax_8bit.dequantize(*(other[f"{key}_{p}"] for p in ("q", "scale", "zero")), block_size)
            scale, zero = (x.repeat_interleave(block_size)[: a.numel()] for x in parts[1:])
            unit = torch.maximum(scale, 8 * ulp * (zero.abs() + 255 * scale)).clamp(min=1e-30)
            worst = max(worst, float(((a - b.reshape(-1)).abs() / unit).max()))
    return worst


def record(worst: dict, ref, opt, t: int) -> None:
    """Lockstep: the state keys must match; raise `worst` to this step's code steps and effective-state
    errors."""
    block_size = ref.config.block_size
    ref_sd, opt_sd = ref.state_dict(), opt.state_dict()
    for pid, saved in ref_sd["state"].items():
        assert set(saved) == set(opt_sd["state"][pid]), f"step {t}: state keys differ"
    worst["code_steps"] = max(worst.get("code_steps", 0.0), code_steps(ref_sd, opt_sd, block_size))
    for key, err in compare_states(effective(ref_sd, block_size), effective(opt_sd, block_size)).items():
        worst[key] = max(worst.get(key, 0.0), err)


def run(case, dtype, compat, lockstep: bool, shapes=None, partner=optimized) -> dict:
    """Worst error per compared quantity; lockstep re-syncs the optimized optimizer to the reference;
    `partner`: see harness.build."""
    return drive(*build(case, dtype, compat, shapes, partner), dtype, record if lockstep else None)


def state_bound(case, dtype) -> float:
    if CASES[case].get("error_correction", True):
        return lockstep_tolerance(dtype).bound
    return max(lockstep_tolerance(dtype).bound, LOCKSTEP_MINMAX_NO_FEEDBACK.bound)


def code_step_bound(compat, dtype) -> float:
    upstream_bf16 = compat == "upstream" and dtype == torch.bfloat16
    return (LOCKSTEP_MINMAX_CODE_STEPS_BF16_UPSTREAM if upstream_bf16 else LOCKSTEP_MINMAX_CODE_STEPS).bound


def free_running_bound(dtype) -> float:
    return (FREE_RUNNING_MINMAX_FP32 if dtype == torch.float32 else free_running_tolerance(dtype)).bound
