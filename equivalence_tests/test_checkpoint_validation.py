"""A checkpoint that does not fit is refused before anything changes (issue 24), every class of both packages.

Each corrupted or foreign state_dict must raise a ValueError that says what did not match, leave the optimizer
as it was (its state_dict and its later steps equal those of a copy that never saw the load), and a parameter
the checkpoint has no state for must restart as in the reference."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import optimized
import reference

from .cases.contract import PACKAGES, WARMED, build, params_of, run
from .differential import CLASSES
from .harness import SELF, RoundingPerturbed, assert_free_running
from .tolerances import free_running_tolerance, scaled_error

COMPATS = ["upstream", "fixed"]


def stepped(package, name, compat):
    opt = build(package, name, compat)
    run(opt, 3, seed=1)
    return opt


def same(a, b) -> bool:
    """Equal tensors, numbers and containers, NaN equal to NaN."""
    if torch.is_tensor(a):
        return (
            torch.is_tensor(b)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(torch.nan_to_num(a.float(), nan=7.0), torch.nan_to_num(b.float(), nan=7.0))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def assert_refused_and_unchanged(opt, bad, match: str):
    twin = copy.deepcopy(opt)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    assert same(opt.state_dict(), before)
    run(opt, 3, seed=2)
    run(twin, 3, seed=2)
    for a, b in zip(params_of(opt), params_of(twin), strict=True):
        assert torch.equal(a, b)


def a_tensor_key(entry: dict) -> str:
    """The first state tensor shaped like a parameter of more than one element."""
    return next(k for k, v in entry.items() if torch.is_tensor(v) and v.dim() >= 1 and v.numel() > 1)


def corrupt(sd: dict, how: str) -> dict:
    sd = copy.deepcopy(sd)
    entry = sd["state"][0]  # the first parameter: a 2-D LoRA factor
    if how == "step is a string":
        entry["step"] = "100"
    elif how == "entry removed":
        del entry["step"]
    elif how == "state key removed":  # m, in whichever form (plain or 8-bit) it was saved
        for k in [k for k in entry if k in ("exp_avg", "exp_avg_q", "exp_avg_q_scale") or k.startswith("exp_avg_q")]:
            del entry[k]
        for k in [k for k in entry if k in ("exp_avg_scale", "exp_avg_zero", "exp_avg_err")]:
            del entry[k]
    elif how == "truncated tensor":
        key = a_tensor_key(entry)
        entry[key] = entry[key].flatten()[:-1]
    elif how == "unknown key":
        entry["exp_avg_foreign"] = torch.zeros(3)
    elif how == "one parameter fewer":
        sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    elif how == "state is not a dict":
        sd["state"][0] = [1, 2]
    return sd


CORRUPTIONS = {
    "step is a string": "step",
    "entry removed": "lacks",
    "state key removed": "lacks",
    "truncated tensor": "shape",
    "unknown key": "does not write",
    "one parameter fewer": "parameters",
    "state is not a dict": "dict",
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_corrupted_checkpoint_is_refused(package, name, compat, how):
    sd = stepped(package, name, compat).state_dict()
    opt = stepped(package, name, compat)
    run(opt, 1, seed=5)  # not the checkpoint's state: a wiped or half-loaded optimizer would show
    assert_refused_and_unchanged(opt, corrupt(sd, how), CORRUPTIONS[how])


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_checkpoint_of_another_class_is_refused(package, name):
    """Same parameters, another class of the family (by its name in the checkpoint), and torch's AdamW (by its
    state keys)."""
    other = CLASSES[(CLASSES.index(name) + 1) % len(CLASSES)]
    foreign = stepped(package, other, "fixed").state_dict()
    assert_refused_and_unchanged(stepped(package, name, "fixed"), foreign, "of " + other)
    foreign.pop("optimizer")
    assert_refused_and_unchanged(stepped(package, name, "fixed"), foreign, "the optimizer is unchanged")
    params = params_of(build(package, name, "fixed"))
    adamw = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.ones_like(p)
    adamw.step()
    assert_refused_and_unchanged(stepped(package, name, "fixed"), adamw.state_dict(), "the optimizer is unchanged")


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_checkpoint_of_other_shapes_is_refused(package, name):
    """A model with the same number of parameters but another shape."""
    sd = stepped(package, name, "fixed").state_dict()
    params = [torch.nn.Parameter(torch.randn(3, 7)) for _ in params_of(build(package, name, "fixed"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = getattr(package, name)(params, compat="fixed", **WARMED[name])
    run(opt, 2, seed=3)
    assert_refused_and_unchanged(opt, sd, "shape")


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
def test_parameter_without_saved_state_restarts_as_in_the_reference(name, compat):
    """The optimized optimizer kept the old step counter of such a parameter over zeroed states (NaN, or
    |Δθ| 4e3 in HinaAdamW); now it restarts as the reference does: both continue alike, within the free-running
    bound or the reference's own drift over the same three steps (harness.assert_free_running)."""
    sd = stepped(reference, name, compat).state_dict()
    sd["state"].pop(2)  # the plain matrix

    def resumed(partner):
        opt = stepped(reference if partner in (reference, SELF) else optimized, name, compat)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.load_state_dict(copy.deepcopy(sd))
        run(RoundingPerturbed(opt) if partner == SELF else opt, 3, seed=4)
        params = [p.detach().clone() for p in params_of(opt)]
        assert all(torch.isfinite(p).all() for p in params)
        assert int(opt.state_dict()["state"][2]["step"]) == 3
        return params

    expected = resumed(reference)
    error = lambda partner: max(map(scaled_error, expected, resumed(partner)))  # noqa: E731
    assert_free_running(error(optimized), free_running_tolerance(torch.float32).bound, lambda: error(SELF))


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_valid_checkpoint_still_loads(package, name):
    """The checks refuse nothing the classes write: a round trip through torch.save(weights_only) loads."""
    import io

    for compat in COMPATS:
        sd = stepped(package, name, compat).state_dict()
        buffer = io.BytesIO()
        torch.save(sd, buffer)
        buffer.seek(0)
        opt = build(package, name, compat)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.load_state_dict(torch.load(buffer, weights_only=True))
        assert same(opt.state_dict()["state"], sd["state"])


def test_every_class_has_a_schema():
    from reference.checkpoint import SCHEMAS

    assert set(CLASSES) <= set(SCHEMAS)
    assert {getattr(optimized, n).__name__ for n in CLASSES} <= set(SCHEMAS)


@pytest.mark.parametrize("stop", [1, 4, 6])  # seeding, t == W, after W (WARMED: W = 4)
@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_resume_is_bit_identical_in_every_class(package, name, compat, stop):
    """Stop after `stop` steps, save through torch.save(weights_only=True), load into a new optimizer over copies of
    the parameters, continue: the same parameters and state as not stopping. Every tensor here is shorter than a
    row of the fast path's layout, so 8-bit padding codes are exercised (they were 0 after a load, not the code
    of zero, and the per-tensor sums read them)."""
    import io

    straight = build(package, name, compat)
    run(straight, stop, seed=1)
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)
    buffer.seek(0)
    resumed = build(package, name, compat)
    for p, q in zip(params_of(resumed), params_of(straight), strict=True):
        p.data.copy_(q.detach())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(straight, 4, seed=2)
    run(resumed, 4, seed=2)
    for a, b in zip(params_of(straight), params_of(resumed), strict=True):
        assert torch.equal(a, b)
    assert same(straight.state_dict()["state"], resumed.state_dict()["state"])


@pytest.mark.parametrize("stop", [1, 2])
@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", ["Automagic_CameAMP8bit", "Automagic_CameAMP_COptim8bit"])
def test_8bit_load_restores_every_code_byte(name, compat, stop):
    """The fast path's 8-bit buffers after a load hold the bytes of the optimizer that saved, padding included
    (padding was 0, not the code `quantize` writes there)."""
    saved = build(optimized, name, compat)
    run(saved, stop, seed=1)
    loaded = build(optimized, name, compat)
    for p, q in zip(params_of(loaded), params_of(saved), strict=True):
        p.data.copy_(q.detach())
    loaded.load_state_dict(saved.state_dict())
    for a, b in zip(saved._buckets[0], loaded._buckets[0], strict=True):
        for key, state in a.states.items():
            if hasattr(state, "codes"):
                assert torch.equal(state.codes, b.states[key].codes), key
                assert torch.equal(state.absmax, b.states[key].absmax), key
