"""Every saved entry has one layout at every step (reference.checkpoint_layout, issue 26), over the randomised
draws of every class, mode and package (`differential.draws`: options, warm-up 0-15, dtypes, shapes, groups,
missing and all-zero gradients).

torch.distributed.checkpoint loads into the state dict of the resuming optimizer, reading only the keys it
holds, refusing other shapes and casting to its dtypes: so at every step each entry must load into the entry
saved before the first step, exactly. And a state dict loaded into a fresh optimizer leaves it holding what the
saving one held, placeholders gone, and saves back equal."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.checkpoint_layout import DTYPES_KEY
from reference.persistence import WIDE_STATE

from .cases.contract import PACKAGES, build, run
from .differential import CLASSES, COMPATS, draws, gradients, losses, make_params, step
from .differential import build as build_draw
from .harness import same_state


def layout(value):
    return (tuple(value.shape), value.dtype) if torch.is_tensor(value) else type(value).__name__


def layouts(sd) -> dict:
    return {pid: {k: layout(v) for k, v in entry.items()} for pid, entry in sd["state"].items()}


def assert_loads_into(fresh: dict, saved: dict, where: str) -> None:
    """DCP reads `saved` into `fresh` exactly: the same keys, shapes and value kinds, and each dtype the same or,
    where the entry records its dtypes (reference.checkpoint_layout.records_dtypes), one the fresh dtype holds."""
    assert fresh.keys() == saved.keys(), where
    for pid, entry in saved.items():
        assert fresh[pid].keys() == entry.keys(), f"{where}, entry {pid}"
        for key, value in entry.items():
            held_as = fresh[pid][key]
            if isinstance(value, str) or isinstance(held_as, str):
                assert held_as == value, f"{where}, entry {pid}, {key}"
                continue
            assert held_as[0] == value[0], f"{where}, entry {pid}, {key}: shape"
            recorded = DTYPES_KEY in entry and value[1].is_floating_point
            fits = torch.promote_types(value[1], held_as[1]) == held_as[1] if recorded else held_as[1] == value[1]
            assert fits, f"{where}, entry {pid}, {key}: {value[1]} into {held_as[1]}"


def held(opt) -> list[dict]:
    """What `optimizer.state` holds per parameter: keys and layouts."""
    return [{k: layout(v) for k, v in opt.state.get(p, {}).items()} for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_layout_at_every_step_and_loads_as_held(package, name, compat, data):
    d = data.draw(draws(classes=(name,), compats=(compat,)))
    named = make_params(d)
    opt = build_draw(d, package, named)
    fresh = layouts(opt.state_dict())
    assert all("step" in entry and entry["step"] == "int" for entry in fresh.values())
    stop = data.draw(st.integers(1, d.steps))
    for t, (grads, loss) in enumerate(zip(gradients(d), losses(d), strict=True), start=1):
        step(opt, named, grads, loss)
        saved = opt.state_dict()
        assert_loads_into(fresh, layouts(saved), f"step {t}")
        if t == stop:
            other_named = make_params(d)
            other = build_draw(d, package, other_named)
            other.load_state_dict(saved)
            # no placeholder is held (upstream's 8bit class also holds a v it never saves [I-11b])
            for theirs, ours in zip(held(other), held(opt), strict=True):
                assert theirs.items() <= ours.items()
            assert same_state(other.state_dict(), saved)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize(
    "name", ["Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit", "Automagic_CameAMP_Improved_8Bit"]
)
def test_unreadable_optimizer_wide_state_is_refused_before_anything_changes(package, name):
    """The optimizer-wide state (C-Optim's context, Improved_8Bit's generator) rides serialised in the first param
    group (reference.persistence.save_wide_state); bytes that do not load are a ValueError naming it."""
    opt = build(package, name, "fixed")
    run(opt, 2, seed=1)
    saved = opt.state_dict()
    wide = saved["param_groups"][0][WIDE_STATE]
    assert len(wide) == 1 and all(isinstance(v, bytes) for v in wide.values())
    key = next(iter(wide))
    broken = {**saved, "param_groups": [{**saved["param_groups"][0], WIDE_STATE: {key: b"not a checkpoint"}},
                                        *saved["param_groups"][1:]]}  # fmt: skip
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(broken)
    assert same_state(opt.state_dict(), saved)
