"""optimized COptim classes against the reference with the context learning from losses (Λ varies, the
edge flag fires), lockstep: parameters and the per-parameter context state after every step.

The loss falls for 12 steps (Λ from the improving branches), then alternates 1.0 / 0.1, whose
coefficient of variation marks every later step an edge case (T16.5, ef < 1).
"""

import pytest
import torch

from reference.persistence import pop_wide_state

from .harness import OPTIMIZER_CASES, build, compare_params, make_grads, set_grads
from .tolerances import lockstep_tolerance

CASE = OPTIMIZER_CASES[0]  # lr 1e-4, W = 20
STEPS = 30


def loss_at(t: int) -> float:
    return 1.0 / t if t <= 12 else (1.0 if t % 2 else 0.1)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", ["Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit"])
def test_lockstep_with_losses(name, compat):
    ref, opt, ref_params, opt_params = build(CASE, torch.float32, compat, name=name)
    gen = torch.Generator().manual_seed(1)
    multipliers, edges, worst = set(), 0, 0.0
    for t in range(1, STEPS + 1):
        grads = make_grads(ref_params, gen)
        set_grads(ref_params, grads)
        set_grads(opt_params, grads)
        ref.step(loss=loss_at(t))
        opt.step(loss=loss_at(t))
        worst = max(worst, compare_params(ref_params, opt_params, compat, early=t < CASE.warmup / 2))
        ref_sd, opt_sd = ref.state_dict(), opt.state_dict()
        for pid, saved in ref_sd["state"].items():
            mine = opt_sd["state"][pid]
            for key in ("contextual_lr_multiplier", "edge_case_count", "momentum_count_5"):
                assert mine[key] == saved[key], (t, key, mine[key], saved[key])
            multipliers.add(saved["contextual_lr_multiplier"])
            edges = max(edges, saved["edge_case_count"])
        histories = [pop_wide_state(sd, "c_optim_state")[1]["loss_history"] for sd in (opt_sd, ref_sd)]
        assert len(histories[0]) == len(histories[1])
        opt.load_state_dict(ref.state_dict())
        with torch.no_grad():
            for a, b in zip(ref_params, opt_params, strict=True):
                b.copy_(a)
    assert len(multipliers) >= 3 and edges > 0, (multipliers, edges)  # the context was exercised
    assert worst <= lockstep_tolerance(torch.float32).bound, worst


@pytest.mark.parametrize("name", ["Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit"])
@pytest.mark.parametrize("package", ["reference", "optimized"])
def test_a_step_without_a_loss_says_so_once(package, name):
    """HF Trainer calls step() without the loss: the contextual multiplier then stays upstream's constant, which the
    first such step says (once); a step given its loss says nothing."""
    import warnings

    import optimized
    import reference

    cls = getattr({"reference": reference, "optimized": optimized}[package], name)
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = cls([p], lr=1e-3)
    p.grad = torch.randn(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(loss=1.0)
        opt.observe_loss(torch.tensor(0.9))
        opt.step()
    with pytest.warns(UserWarning, match=r"got no loss.*observe_loss") as caught:
        opt.step()
        opt.step()
    assert sum("got no loss" in str(w.message) for w in caught) == 1
