"""optimized.HinaAdamWOptimizer against reference.HinaAdamWOptimizer, lockstep and free-running.

Parameters carry LoRA/LoKr names, so the step-size factors (paired A, B, LoKr), the dynamic weight
decay (transition at step 5) and SPD all act: a LoRA pair listed A first, one listed B first (the A's
factor then reads the B's new value: the optimized class steps it in a second wave), a LoKr pair, a conv
pair, a 0-d and a 1-D regular parameter, and a non-contiguous one. B factors start at zero, as in LoRA.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

import optimized
import reference

from .harness import (
    SELF,
    assert_free_running,
    clone_named,
    make_partner,
    record_state_errors,
    resync,
    roundtrip,
    straight_and_resumed,
    with_compiled,
)
from .tolerances import (
    FREE_RUNNING_8BIT_FP32,
    FREE_RUNNING_BF16_CAUTIOUS,
    LOCKSTEP_8BIT_FLIPS_SMALL_SETS,
    LOCKSTEP_8BIT_STATES,
    free_running_tolerance,
    lockstep_tolerance,
    scaled_error,
)

NAMED_SHAPES = [
    ("attn.lora_down.weight", (4, 64)),
    ("attn.lora_up.weight", (48, 4)),
    ("mlp.lora_B.weight", (40, 8)),  # B before its A
    ("mlp.lora_A.weight", (8, 300)),
    ("conv.lora_down.weight", (4, 3, 3, 3)),
    ("conv.lora_up.weight", (8, 4, 1, 1)),
    ("block.lokr_w1", (6, 5)),
    ("block.lokr_w2", (7, 9)),
    ("norm.bias", (37,)),
    ("scale", ()),
]
NONCONTIGUOUS = ("proj.weight", (24, 33))  # stored as the transpose of a (33, 24) tensor
ZERO_INIT = ("lora_up", "lora_B")


@dataclass(frozen=True)
class HinaCase:
    name: str
    kwargs: dict = field(default_factory=dict)
    steps: int = 12

    @property
    def eight_bit(self) -> bool:
        return self.kwargs.get("optim_bits") == 8


HINA_CASES = [
    HinaCase("defaults, lr 1e-3", {"lr": 1e-3, "wd_transition_steps": 5}),
    # OrthoGrad on, Grams off (so Cautious acts), plain Adam denominator, the least ε (it must be > 0), other betas
    HinaCase(
        "orthogonal, cautious, no adopt, eps 1e-30",
        dict(
            lr=3e-3,
            use_orthogonal_grad=True,
            use_grams=False,
            use_adopt_stability=False,
            eps=1e-30,
            betas=(0.8, 0.99),
            weight_decay=0.1,
            spd_lambda=0.5,
            alora_ratio=4.0,
            wd_transition_steps=3,
            tam_beta=0.9,
        ),
    ),
    HinaCase("8-bit m, v", {"lr": 1e-3, "optim_bits": 8, "min_8bit_size": 64, "wd_transition_steps": 5}),
]
DTYPES = [torch.float32, torch.bfloat16]
COMPATS = ["upstream", "fixed"]
# compiled in `make test` (conftest.py): the defaults upstream fp32, OrthoGrad + Cautious fixed bf16 (the
# emulated bf16 roundings), 8-bit fixed fp32; `make verify` compiles every row
COMPILED = {(0, "upstream", torch.float32), (1, "fixed", torch.bfloat16), (2, "fixed", torch.float32)}
MATRIX = with_compiled(
    [(case, compat, dtype) for case in HINA_CASES for compat in COMPATS for dtype in DTYPES],
    lambda case, compat, dtype: (HINA_CASES.index(case), compat, dtype) in COMPILED,
)
IDS = lambda x: getattr(x, "name", str(x))  # noqa: E731


def make_named(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in NAMED_SHAPES:
        value = torch.randn(shape, generator=gen) * 0.5
        out.append((name, torch.nn.Parameter((value * 0 if any(z in name for z in ZERO_INIT) else value).to(dtype))))
    name, shape = NONCONTIGUOUS
    out.append((name, torch.nn.Parameter((torch.randn(shape[::-1], generator=gen) * 0.5).to(dtype).t())))
    return out


def build(case: HinaCase, dtype, compat, seed=0, partner=optimized):
    ref_named = make_named(dtype, seed)
    opt_named = clone_named(ref_named)
    ref = reference.HinaAdamWOptimizer(ref_named, compat=compat, **case.kwargs)
    opt = make_partner(partner, "HinaAdamWOptimizer", opt_named, compat=compat, **case.kwargs)
    return ref, opt, [p for _, p in ref_named], [p for _, p in opt_named]


def set_grads(gen, *param_lists):
    for ps in zip(*param_lists, strict=True):
        g = torch.randn(ps[0].shape, generator=gen).to(ps[0].dtype)
        for p in ps:
            p.grad = g.clone()


def lockstep(case: HinaCase, dtype, compat, seed=0, skip=None) -> dict:
    """Worst error per compared quantity, re-syncing the optimized optimizer to the reference each step.
    `skip(t, i)`: parameter i has no gradient at step t."""
    ref, opt, ref_params, opt_params = build(case, dtype, compat, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    worst = {"params": 0.0}
    for t in range(1, case.steps + 1):
        set_grads(gen, ref_params, opt_params)
        for i, (a, b) in enumerate(zip(ref_params, opt_params, strict=True)):
            if skip is not None and skip(t, i):
                a.grad = b.grad = None
        ref.step()
        opt.step()
        worst["params"] = max(worst["params"], max(map(scaled_error, ref_params, opt_params)))
        record_state_errors(worst, ref, opt, t)
        resync(ref, opt, ref_params, opt_params)
    return worst


def free_running(case: HinaCase, dtype, compat, seed=0, partner=optimized) -> float:
    ref, opt, ref_params, opt_params = build(case, dtype, compat, seed, partner)
    gen = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for _ in range(case.steps):
        set_grads(gen, ref_params, opt_params)
        ref.step()
        opt.step()
        worst = max(worst, max(map(scaled_error, ref_params, opt_params)))
    return worst


def lockstep_bounds(case: HinaCase, dtype, worst: dict) -> dict:
    """The tolerance of each compared quantity."""
    bound = lockstep_tolerance(dtype).bound
    bounds = {key: bound for key in worst}
    bounds["code_flips"] = LOCKSTEP_8BIT_FLIPS_SMALL_SETS.bound  # ~8,000 codes a step: one flip is 1.2e-4
    if case.eight_bit:
        for key in worst:
            if key.startswith("exp_avg"):
                bounds[key] = max(LOCKSTEP_8BIT_STATES.bound, bound)
    return bounds


def free_running_bound(case: HinaCase, dtype) -> float:
    if case.eight_bit and dtype == torch.float32:
        return FREE_RUNNING_8BIT_FP32.bound
    cautious = case.kwargs.get("use_cautious", True) and not case.kwargs.get("use_grams", True)
    if dtype == torch.bfloat16 and cautious and case.kwargs.get("use_orthogonal_grad"):
        return FREE_RUNNING_BF16_CAUTIOUS.bound
    return free_running_tolerance(dtype).bound


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
