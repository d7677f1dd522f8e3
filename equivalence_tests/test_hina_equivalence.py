"""optimized.HinaAdamWOptimizer against reference.HinaAdamWOptimizer, lockstep and free-running.

Parameters carry LoRA/LoKr names, so the step-size factors (paired A, B, LoKr), the dynamic weight
decay (transition at step 5) and SPD all act: a LoRA pair listed A first, one listed B first (the A's
factor then reads the B's new value: the optimized class steps it in a second wave), a LoKr pair, a conv
pair, a 0-d and a 1-D regular parameter, and a non-contiguous one. B factors start at zero, as in LoRA.
"""

from __future__ import annotations

import copy

import pytest
import torch

import optimized
import reference

from .cases.hina import (
    COMPATS,
    DTYPES,
    HINA_CASES,
    build,
    free_running,
    free_running_bound,
    lockstep,
    lockstep_bounds,
    make_named,
    set_grads,
)
from .harness import SELF, assert_free_running, roundtrip, straight_and_resumed, with_compiled

# compiled in `make test` (conftest.py): the defaults upstream fp32, OrthoGrad + Cautious fixed bf16 (the
# emulated bf16 roundings), 8-bit fixed fp32; `make verify` compiles every row
COMPILED = {(0, "upstream", torch.float32), (1, "fixed", torch.bfloat16), (2, "fixed", torch.float32)}


MATRIX = with_compiled(
    [(case, compat, dtype) for case in HINA_CASES for compat in COMPATS for dtype in DTYPES],
    lambda case, compat, dtype: (HINA_CASES.index(case), compat, dtype) in COMPILED,
)


IDS = lambda x: getattr(x, "name", str(x))  # noqa: E731


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=IDS)
def test_lockstep(case, compat, dtype):
    worst = lockstep(case, dtype, compat)
    expected = {"params", "step", "exp_avg", "exp_avg_sq", "momentum_alignment", "spd_anchor"}
    assert expected <= set(worst), f"not compared: {expected - set(worst)}"
    bounds = lockstep_bounds(case, dtype, worst)
    for key, err in worst.items():
        assert err <= bounds[key], f"{key}: {err:.3e} > {bounds[key]}"


@pytest.mark.parametrize("case,compat,dtype", MATRIX, ids=IDS)
def test_free_running(case, compat, dtype):
    err = free_running(case, dtype, compat)
    own = lambda: free_running(case, dtype, compat, partner=SELF)  # noqa: E731
    assert_free_running(err, free_running_bound(case, dtype), own)


@pytest.mark.parametrize("case", [HINA_CASES[0], HINA_CASES[2]], ids=lambda c: c.name)
def test_tensors_without_a_gradient_keep_their_state(case):
    """Some tensors skip steps (no gradient, from the start for one of them): they keep m, v and their step
    count, as in the reference."""
    worst = lockstep(case, torch.float32, "fixed", skip=lambda t, i: (t + i) % 3 == 0 or (i == 3 and t < 5))
    bounds = lockstep_bounds(case, torch.float32, worst)
    for key, err in worst.items():
        assert err <= bounds[key], f"{key}: {err:.3e} > {bounds[key]}"


def test_b_first_pair_is_stepped_in_a_second_wave():
    """The A listed after its B reads the B's new value, as the reference does: it sits in a bucket of its
    own that steps after the B's."""
    _, opt, _, _ = build(HINA_CASES[0], torch.float32, "upstream")
    waves = {opt.layout.names[p]: b.host["wave"] for b in opt._group_buckets(0) for p in b.params}
    assert waves["mlp.lora_A.weight"] == 2
    assert {name for name, wave in waves.items() if wave == 2} == {"mlp.lora_A.weight", "block.lokr_w2"}


@pytest.mark.parametrize("case", HINA_CASES, ids=lambda c: c.name)
def test_resume_is_bit_identical(case):
    """N steps == k steps, save (weights_only), load into a fresh optimizer, N − k steps."""
    gen = torch.Generator().manual_seed(5)
    grads = [[torch.randn(p.shape, generator=gen) for _, p in make_named(torch.float32)] for _ in range(8)]

    def new_params():
        named = make_named(torch.float32)
        return named, [p for _, p in named]

    straight, resumed = straight_and_resumed(
        new_params, lambda named: optimized.HinaAdamWOptimizer(named, compat="fixed", **case.kwargs), grads, 3
    )
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_state_dicts_load_across_the_two_classes():
    """The optimized class writes the reference's state_dict format and reads it back."""
    case = HINA_CASES[2]
    ref, opt, ref_params, opt_params = build(case, torch.float32, "fixed")
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        set_grads(gen, ref_params, opt_params)
        ref.step()
        opt.step()
    saved = roundtrip(opt.state_dict())
    fresh = reference.HinaAdamWOptimizer(make_named(torch.float32), compat="fixed", **case.kwargs)
    fresh.load_state_dict(saved)
    for pid, state in saved["state"].items():
        for key, value in state.items():
            loaded = fresh.state_dict()["state"][pid][key]
            assert torch.equal(torch.as_tensor(loaded), torch.as_tensor(value)), key


@pytest.mark.parametrize(
    "cls", [reference.HinaAdamWOptimizer, optimized.HinaAdamWOptimizer], ids=["reference", "optimized"]
)
def test_upstream_dead_prev_state_is_dropped_on_load(cls):
    """Upstream saves v̄ (`exp_avg_sq_prev`) but overwrites it before reading it: a checkpoint holding any
    v̄ loads without it, and the run continues exactly as from the same checkpoint without it."""
    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(p.shape, generator=gen) for _, p in make_named(torch.float32)] for _ in range(3)]

    def resumed(saved):
        named = make_named(torch.float32)
        opt = cls(named, compat="upstream", lr=1e-3)
        opt.load_state_dict(roundtrip(saved))
        assert not any(k.startswith("exp_avg_sq_prev") for st in opt.state_dict()["state"].values() for k in st)
        for (_, p), g in zip(named, grads[2], strict=True):
            p.grad = g.clone()
        opt.step()
        return [p.detach().clone() for _, p in named]

    named = make_named(torch.float32)
    opt = cls(named, compat="upstream", lr=1e-3)
    for gs in grads[:2]:
        for (_, p), g in zip(named, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    saved = opt.state_dict()
    with_prev = copy.deepcopy(saved)
    for state in with_prev["state"].values():
        if "exp_avg_sq" in state:
            state["exp_avg_sq_prev"] = torch.rand_like(state["exp_avg_sq"])
    for a, b in zip(resumed(saved), resumed(with_prev), strict=True):
        assert torch.equal(a, b)


def test_state_bytes_are_measured_from_the_buffers():
    case = HINA_CASES[2]
    _, opt, _, opt_params = build(case, torch.float32, "fixed")
    for p in opt_params:
        p.grad = torch.ones_like(p)
    opt.step()
    expected = 0
    for b in opt._group_buckets(0):
        for value in b.states.values():
            tensors = value if isinstance(value, tuple) else (value,)
            expected += sum(t.numel() * t.element_size() for t in tensors)
    assert opt.state_bytes() == expected > 0


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((4, 64), (48, 4)), ((16, 4), (4, 24)), ((4, 30), (20, 30)), ((5, 12), (5, 9)), ((4, 3, 3, 3), (8, 4, 1, 1)),
     ((4, 6, 2), (3, 6, 5))],
    ids=["B·A", "A·B", "B·Aᵀ", "Bᵀ·A", "conv", "no product"],
)  # fmt: skip
def test_lora_a_factor_matches_the_product_it_never_forms(a_shape, b_shape):
    """lora_factors.BucketFactors (row norms of BA from a Gram matrix) against reference.lora_names.lora_a_scale
    (which forms BA) for every orientation the reference tries, and its fallback."""
    from optimized.lora_factors import BucketFactors
    from reference import lora_names

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(a_shape, generator=gen), torch.randn(b_shape, generator=gen) * 0.3
    layout = lora_names.build_layout([[("x.lora_down.weight", a), ("x.lora_up.weight", b)]], fixed=False)
    assert layout.lora_pairs, "the shapes must pair"
    got = BucketFactors([a, b], layout, alora_ratio=16.0, fixed=False, device="cpu").compute()
    assert abs(float(got[0]) - lora_names.lora_a_scale(a, b)) <= 1e-6 * lora_names.lora_a_scale(a, b)
    assert float(got[1]) == 1.0  # a paired B has no factor upstream


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("package", [reference, optimized], ids=lambda p: p.__name__)
def test_orthograd_of_a_gradient_parallel_to_theta_is_no_step(package, dtype):
    """T7c's g⊥ of a gradient parallel to θ (a one-element matrix always; here also g = c·θ) is 0 in exact
    arithmetic; the computed one was rounding noise, which Adam's normalisation made a step of up to η with an
    arbitrary sign, different in each implementation (found by the randomised differential check: 3e-3 of a
    (1, 1) parameter). In the corrected mode that tensor does not move (weight decay and SPD off); a tensor
    beside it whose gradient is not parallel to θ still does."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype)) for shape in ((1, 1), (6, 5), (6, 5))]
    before = [p.detach().clone() for p in params]
    opt = package.HinaAdamWOptimizer(params, lr=1e-2, weight_decay=0.0, use_spd=False, use_orthogonal_grad=True)
    for _ in range(3):
        scale = float(torch.rand((), generator=gen)) + 0.5
        params[0].grad = torch.randn((1, 1), generator=gen, dtype=dtype)
        params[1].grad = -scale * params[1].detach().clone()
        params[2].grad = torch.randn((6, 5), generator=gen, dtype=dtype)
        opt.step()
    assert torch.equal(params[0], before[0]) and torch.equal(params[1], before[1])
    assert not torch.equal(params[2], before[2])
