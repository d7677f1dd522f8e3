"""HinaAdamWOptimizer cases (O9): kwargs, the lockstep and free runs and their bounds."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import optimized
import reference

from ..harness import clone_named, make_partner, record_state_errors, resync
from ..tolerances import (
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
