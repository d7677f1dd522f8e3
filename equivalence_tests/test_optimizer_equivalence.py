"""optimized.Automagic_CameAMP and Automagic_CameAMP_COptim against their references, lockstep and
free-running (COptim's context with losses: test_coptim_equivalence.py).

Every case runs at least 2·W steps, so t = 1 (seeding), t = W/2 (TAM → consistency, OrthoGrad and
weight decay off) and t = W (mask frozen, warm-up state dropped) are all crossed.
"""

import pytest
import torch

from .harness import OPTIMIZER_CASES, SELF, assert_free_running, free_running, lockstep, with_compiled
from .tolerances import free_running_tolerance, lockstep_tolerance, momentum_tolerance

DTYPES = [torch.float32, torch.bfloat16]
COMPATS = ["upstream", "fixed"]
# COptim: the basic case, came=False (V2 without CAME: C beside the ADOPT clip) and full_finetune with
# other betas and eps; the other switches are O1's. `make verify` runs every case.
PAIRS = [("Automagic_CameAMP", case) for case in OPTIMIZER_CASES] + [
    ("Automagic_CameAMP_COptim", OPTIMIZER_CASES[i]) for i in (0, 3, 5)
]


def _compiled(name, case, compat, dtype) -> bool:
    """Compiled in `make test` (conftest.py): the basic case, which crosses every phase, of O1 in every mode
    and dtype, and of COptim in fixed fp32 and upstream bf16 (its own tolerance); the rest runs eagerly."""
    if case is not OPTIMIZER_CASES[0]:
        return False
    return name == "Automagic_CameAMP" or (compat, dtype) in (("fixed", torch.float32), ("upstream", torch.bfloat16))


MATRIX = with_compiled(
    [(name, case, compat, dtype) for name, case in PAIRS for compat in COMPATS for dtype in DTYPES], _compiled
)
IDS = lambda x: getattr(x, "name", str(x))  # noqa: E731


@pytest.mark.parametrize("name,case,compat,dtype", MATRIX, ids=IDS)
def test_lockstep(name, case, compat, dtype):
    assert case.steps >= 2 * case.warmup
    tol, momentum_tol = lockstep_tolerance(dtype), momentum_tolerance(dtype, name, compat)
    worst = lockstep(case, dtype, compat, name=name)
    expected = {"params", "step", "lr_max", "lr_mask", "avg_lr", "exp_avg", "exp_avg_res", "last_polarity", "s"}
    if name == "Automagic_CameAMP_COptim":
        expected |= {"momentum_scale_1", "momentum_count_5", "edge_case_count", "contextual_lr_multiplier"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    for key, err in worst.items():
        bound = momentum_tol.bound if key == "exp_avg" else tol.bound
        assert err <= bound, f"{key}: {err:.3e} > {bound}"


@pytest.mark.parametrize("name,case,compat,dtype", MATRIX, ids=IDS)
def test_free_running(name, case, compat, dtype):
    err = free_running(case, dtype, compat, name=name)
    own = lambda: free_running(case, dtype, compat, name=name, partner=SELF)  # noqa: E731
    assert_free_running(err, free_running_tolerance(dtype).bound, own)


@pytest.mark.compiled
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
