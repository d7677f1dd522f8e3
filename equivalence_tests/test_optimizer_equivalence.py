"""optimized.Automagic_CameAMP against reference.Automagic_CameAMP, lockstep and free-running.

Every case runs at least 2·W steps, so t = 1 (seeding), t = W/2 (TAM → consistency, OrthoGrad and
weight decay off) and t = W (mask frozen, warm-up state dropped) are all crossed.
"""

import pytest
import torch

from .harness import OPTIMIZER_CASES, free_running, lockstep
from .tolerances import free_running_tolerance, lockstep_tolerance

DTYPES = [torch.float32, torch.bfloat16]
COMPATS = ["upstream", "fixed"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)
def test_lockstep(case, compat, dtype):
    assert case.steps >= 2 * case.warmup
    tol = lockstep_tolerance(dtype)
    worst = lockstep(case, dtype, compat)
    expected = {"params", "step", "lr_max", "lr_mask", "avg_lr", "exp_avg", "exp_avg_res", "last_polarity", "s"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    for key, err in worst.items():
        assert err <= tol.bound, f"{key}: {err:.3e} > {tol.bound}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)
def test_free_running(case, compat, dtype):
    tol = free_running_tolerance(dtype)
    err = free_running(case, dtype, compat)
    assert err <= tol.bound, f"{err:.3e} > {tol.bound}"


def test_eager_switch_runs_the_same_code():
    """The uncompiled path (CAMEAMP_COMPILE=0 / set_compile(False)) gives the compiled results."""
    import optimized

    case = OPTIMIZER_CASES[0]
    compiled = lockstep(case, torch.float32, "upstream")
    optimized.set_compile(False)
    try:
        eager = lockstep(case, torch.float32, "upstream")
    finally:
        optimized.set_compile(True)
    tol = lockstep_tolerance(torch.float32)
    assert max(compiled.values()) <= tol.bound and max(eager.values()) <= tol.bound
