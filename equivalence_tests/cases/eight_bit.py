"""The bitsandbytes-codec 8-bit classes' cases (O2, O5): modes and bounds."""

import torch

from ..tolerances import (
    FREE_RUNNING_8BIT_FP32,
    FREE_RUNNING_8BIT_UPSTREAM_TAM,
    LOCKSTEP_8BIT_UPSTREAM,
    free_running_tolerance,
    lockstep_tolerance,
)

NAMES = ["Automagic_CameAMP8bit", "Automagic_CameAMP_COptim8bit"]


MODES = [("fixed", torch.float32), ("fixed", torch.bfloat16), ("upstream", torch.float32)]


def fresh_residual(name, compat) -> bool:
    """Upstream O2 never stores r [I-08] (LOCKSTEP_8BIT_UPSTREAM); COptim8bit keeps O4's residual."""
    return compat == "upstream" and name == "Automagic_CameAMP8bit"


def param_bound(name, compat, dtype) -> float:
    return (LOCKSTEP_8BIT_UPSTREAM if fresh_residual(name, compat) else lockstep_tolerance(dtype)).bound


def free_running_bound(name, compat, dtype) -> float:
    if fresh_residual(name, compat):
        return LOCKSTEP_8BIT_UPSTREAM.bound
    if compat == "upstream":
        return FREE_RUNNING_8BIT_UPSTREAM_TAM.bound
    return (free_running_tolerance(dtype) if dtype == torch.bfloat16 else FREE_RUNNING_8BIT_FP32).bound
