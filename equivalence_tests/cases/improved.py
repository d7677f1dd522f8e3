"""Automagic_CameAMP_Improved cases (O6): kwargs, shapes, the lockstep and free runs, resume helpers."""

from __future__ import annotations

import torch

import optimized
import reference

from ..harness import compare_states, make_partner, record_state_errors, resync, roundtrip, straight_and_resumed
from ..tolerances import scaled_error

SHAPES = [(16, 24), (16, 24), (16, 24), (24, 16), (100, 120), (4, 3, 3, 3), (4, 3, 3, 3), (37,), (), (1, 5)]


NONCONTIGUOUS = (24, 33)


MASK = dict(lr=1e-3, min_lr=1e-5, max_lr=1e-2, lr_bump=1e-4)


CASES = {
    "defaults, W 8": dict(MASK, warmup_steps=8),
    "exact SVD penalty, no came/dual/edge/spatial/background, d_coef 3": dict(
        MASK,
        warmup_steps=6,
        came=False,
        enable_dual_momentum=False,
        edge_suppression=False,
        spatial_awareness=False,
        use_approximate_svd=False,
        background_regularization=False,
        betas=(0.9, 0.95, 0.99),
        d_coef=3.0,
    ),
    "edge threshold 0.01 (edges fire), no rank penalty": dict(
        MASK, warmup_steps=6, edge_threshold=0.01, edge_penalty=0.5, lora_rank_penalty=False
    ),
}


STEPS = 16


LR_HALVED_AT = 11


MATRIX = [(case, compat, dtype) for case in CASES for compat in ("upstream", "fixed")
          for dtype in (torch.float32, torch.bfloat16)]  # fmt: skip


# compiled on fewer shapes: each stack class (ndim, one tensor or several, size over 4,096) is a graph per
# phase at 5-10 s each on two cold cores. `make test` compiles the first (mode, dtype) on two stacks of two
# matrices, the graphs test_compile's count test has compiled (conftest.py); `make verify` both (mode, dtype)
# for every case on every class (upstream bf16 stacks run uncompiled)
COMPILED_SHAPES = [(16, 24), (16, 24), (100, 120), (37,), ()]


COMPILED = [("upstream", torch.float32), ("fixed", torch.bfloat16)]


def make_params(dtype, seed=0, shapes=None):
    gen = torch.Generator().manual_seed(seed)
    if shapes is not None:
        return [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.5).to(dtype)) for s in shapes]
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.5).to(dtype)) for s in SHAPES]
    base = (torch.randn(NONCONTIGUOUS[::-1], generator=gen) * 0.5).to(dtype)
    return [*params, torch.nn.Parameter(base.t())]


def build(case, dtype, compat, shapes=None, partner=optimized):
    ref_params = make_params(dtype, shapes=shapes)
    opt_params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    ref = reference.Automagic_CameAMP_Improved(ref_params, compat=compat, **CASES[case])
    opt = make_partner(partner, "Automagic_CameAMP_Improved", opt_params, compat=compat, **CASES[case])
    return ref, opt, ref_params, opt_params


def run(case, dtype, compat, lockstep: bool, skip=None, shapes=None, partner=optimized) -> dict:
    """Worst error per compared quantity; lockstep re-syncs the optimized optimizer to the reference
    after each step. `skip(t, i)`: parameter i has no gradient at step t; `shapes`: other parameters;
    `partner`: see harness.build."""
    record = record_state_errors if lockstep else None
    return drive(*build(case, dtype, compat, shapes, partner), dtype, record, skip)


def drive(ref, opt, ref_params, opt_params, dtype, record=None, skip=None) -> dict:
    """STEPS steps of both optimizers on the same gradients, the lr halved at LR_HALVED_AT. Returns the
    worst parameter error, and with `record(worst, ref, opt, t)` (lockstep) what it records after each
    step, before the optimized optimizer is re-synced to the reference."""
    gen = torch.Generator().manual_seed(1)
    worst = {"params": 0.0}
    for t in range(1, STEPS + 1):
        if t == LR_HALVED_AT:
            for o in (ref, opt):
                o.param_groups[0]["lr"] *= 0.5
        for i, (a, b) in enumerate(zip(ref_params, opt_params, strict=True)):
            g = torch.randn(a.shape, generator=gen).to(dtype)
            a.grad, b.grad = (None, None) if skip is not None and skip(t, i) else (g.clone(), g.clone())
        ref.step()
        opt.step()
        worst["params"] = max(worst["params"], max(map(scaled_error, ref_params, opt_params)))
        if record is None:
            continue
        record(worst, ref, opt, t)
        resync(ref, opt, ref_params, opt_params)
    return worst


def recording_stack_sizes(shape, sizes: list, record=record_state_errors):
    """`record` for lockstep that also appends, each step, the sizes of the stacks holding parameters of
    `shape`."""

    def record_with_sizes(worst, ref, opt, t):
        sizes.append(sorted(len(s.params) for s in opt._stacks.values() if tuple(s.params[0].shape) == shape))
        record(worst, ref, opt, t)

    return record_with_sizes


def resumes_bit_identically(make, new_optimizer) -> bool:
    """10 steps == 3 steps, save (weights_only), load into a fresh optimizer over fresh parameters `make()`,
    7 steps: True when every parameter is bit-identical. Shared by the stacked classes' tests."""
    gen = torch.Generator().manual_seed(5)
    grads = [[torch.randn(p.shape, generator=gen) for p in make()] for _ in range(10)]

    def new_params():
        params = make()
        return params, params

    straight, resumed = straight_and_resumed(new_params, new_optimizer, grads, 3)
    return all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


def saved_after_steps(ref, opt, ref_params, opt_params, steps=3, seed=0):
    """Both optimizers `steps` steps on the same random gradients, in lockstep (the optimized one re-synced to
    the reference before each step after the first, so its state holds one step's round-off: a free run would
    carry an 8-bit code that flipped at a near-tie into the next step's reads); the optimized one's state_dict,
    saved and loaded back (weights_only)."""
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        if t:
            resync(ref, opt, ref_params, opt_params)
        for a, b in zip(ref_params, opt_params, strict=True):
            a.grad = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            b.grad = a.grad.clone()
        ref.step()
        opt.step()
    return roundtrip(opt.state_dict())


def loads_unchanged(fresh, saved) -> bool:
    """`fresh` (the reference class) loads `saved` and gives it back unchanged."""
    fresh.load_state_dict(saved)
    return compare_states(saved, fresh.state_dict()) == {k: 0.0 for k in compare_states(saved, saved)}
