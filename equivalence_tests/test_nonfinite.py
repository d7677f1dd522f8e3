"""NaN/Inf gradients (issue 7): the documented policy, `nonfinite="raise"` (default: ValueError) or "skip"
(a warning, and the step is skipped without touching parameters, state or counters), for every class of
the family, reference and optimized."""

import copy

import pytest
import torch

import optimized
import reference

from .cases.family import make_params
from .cases.resume import CLASSES, build, feed_steps

KINDS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CLASSES)
def test_nonfinite_gradients_raise_or_skip_without_touching_state(name, kind):
    for nonfinite in ("raise", "skip"):
        params = make_params()
        opt = build(name, params, "fixed", nonfinite=nonfinite)
        feed_steps(name, params, opt, 0, 3)  # some state first
        before = snapshot(params, opt)
        params[1].grad[0] = KINDS[kind]
        if nonfinite == "raise":
            with pytest.raises(ValueError, match="NaN or Inf"):
                opt.step(loss=0.5) if "COptim" in name else opt.step()
        else:
            with pytest.warns(UserWarning, match="skipped"):
                opt.step(loss=0.5) if "COptim" in name else opt.step()
        after = snapshot(params, opt)
        assert same(before[0], after[0]) and same(before[1], after[1])
        feed_steps(name, params, opt, 3, 4)  # a finite step afterwards goes through
        assert all(torch.isfinite(p).all() for p in params)
        assert not same(before[0], [p.detach() for p in params])


def test_skipped_step_leaves_the_run_as_if_it_never_happened():
    """With nonfinite='skip', a run with a NaN step inserted equals the run without it."""
    clean, dirty = make_params(), make_params()
    a = build("Automagic_CameAMP_Improved", clean, "upstream", nonfinite="skip")
    b = build("Automagic_CameAMP_Improved", dirty, "upstream", nonfinite="skip")
    feed_steps("x", clean, a, 0, 6)
    feed_steps("x", dirty, b, 0, 3)
    for p in dirty:
        p.grad = torch.full_like(p, float("nan"))
    with pytest.warns(UserWarning):
        b.step()
    feed_steps("x", dirty, b, 3, 6)
    assert all(torch.equal(x, y) for x, y in zip(clean, dirty, strict=True))


@pytest.mark.parametrize(
    "cls", [reference.Automagic_CameAMP, optimized.Automagic_CameAMP, optimized.Automagic_CameAMP8bit,
            optimized.Automagic_CameAMP_COptim, optimized.Automagic_CameAMP_COptim8bit,
            reference.Automagic_CameAMP_Improved, optimized.Automagic_CameAMP_Improved,
            reference.Automagic_CameAMP_Improved_8Bit, optimized.Automagic_CameAMP_Improved_8Bit,
            reference.Automagic_CameAMP_8Bit,
            optimized.Automagic_CameAMP_8Bit, reference.HinaAdamWOptimizer, optimized.HinaAdamWOptimizer]
)  # fmt: skip
def test_invalid_policy_names_the_argument(cls):
    with pytest.raises(ValueError, match="nonfinite"):
        cls([torch.nn.Parameter(torch.zeros(3))], nonfinite="ignore")
