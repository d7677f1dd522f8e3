"""Optimizer cases and the two ways of comparing the optimized class with the reference.

lockstep: after every step compare the parameters and every state entry, then copy the reference's
    parameters and state_dict into the optimized optimizer, so each step is judged from identical state.
free-running: both run N steps on the same gradients; compare the parameters along the way.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field

import pytest
import torch

import optimized
import reference
import reference.automagic_cameamp_improved
import reference.automagic_cameamp_improved_8bit
from reference import blockwise_8bit, minmax_8bit
from reference.checkpoint_layout import DTYPES_KEY

from .tolerances import SELF_DIVERGENCE, scaled_error

# 0-d, 1-D, LoRA-like pairs, 4-D conv, sizes that are no multiple of any block size (incl. the
# 256- and 32-element row widths), and a non-contiguous parameter (a transposed view).
SHAPES = [(), (37,), (16, 768), (768, 16), (8, 4, 3, 3), (5, 7)]
NONCONTIGUOUS = (24, 33)  # stored as the transpose of a (33, 24) tensor


@dataclass(frozen=True)
class OptimizerCase:
    name: str
    kwargs: dict = field(default_factory=dict)
    steps: int = 40  # ≥ 2·W: covers t = 1, W/2 and W

    @property
    def warmup(self) -> int:
        return self.kwargs["warmup_steps"]


OPTIMIZER_CASES = [
    OptimizerCase("lr 1e-4, W=20", {"lr": 1e-4, "warmup_steps": 20}),
    OptimizerCase("weight_decay 1e-2, W=20", {"lr": 1e-4, "warmup_steps": 20, "weight_decay": 1e-2}),
    OptimizerCase("odd W=9, lr 1e-3", {"lr": 1e-3, "warmup_steps": 9}, steps=20),
    OptimizerCase("came=False, W=12", {"lr": 1e-4, "warmup_steps": 12, "came": False}, steps=26),
    # bf16 parameters of magnitude ~0.5 only move when a step exceeds one bf16 ulp (~2e-3)
    OptimizerCase(
        "lr 1e-2, max_lr 5e-2, W=10", {"lr": 1e-2, "max_lr": 5e-2, "lr_bump": 1e-4, "warmup_steps": 10}, steps=22
    ),
    OptimizerCase(
        "full_finetune, clip 0.5, betas, eps",
        {
            "lr": 3e-4,
            "warmup_steps": 10,
            "full_finetune": True,
            "clip_threshold": 0.5,
            "betas": (0.7, 0.95, 0.99),
            "eps": (1e-20, 1e-12, 1e-8),
            "beta1_decay": 0.99,
        },
        steps=22,
    ),
]


def with_compiled(params, compiled) -> list:
    """pytest params (tuples), those for which `compiled(*values)` holds marked `compiled` (conftest.py)."""
    return [pytest.param(*values, marks=[pytest.mark.compiled] if compiled(*values) else []) for values in params]


def make_params(dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.5).to(dtype)) for s in SHAPES]
    base = (torch.randn(NONCONTIGUOUS[::-1], generator=gen) * 0.5).to(dtype)
    params.append(torch.nn.Parameter(base.t()))
    return params


def clone_params(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(torch.empty_strided(p.shape, p.stride(), dtype=p.dtype))
        with torch.no_grad():
            q.copy_(p)
        out.append(q)
    return out


def clone_named(named):
    """`clone_params` of (name, parameter) pairs, names kept."""
    return list(zip([n for n, _ in named], clone_params([p for _, p in named]), strict=True))


def make_grads(params, gen):
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


# Scale floors for quantities bounded by 1 in magnitude: the fixed-mode TAM coefficient s is an EMA of
# cosines, often near 0, so its error is judged against 1 rather than against |s|; HinaAdamW's TAM
# alignment A is one too.
SCALE_FLOOR = {"s": 1.0, "momentum_alignment": 1.0}


def undefined(p, compat, early: bool) -> bool:
    """One-element parameters in upstream mode while t < W/2: OrthoGrad turns rounding noise into a
    full-size step of arbitrary sign (see reference.orthograd), so there is no defined value to compare.
    test_orthograd_degenerate checks what is defined there (its magnitude) and the fixed mode."""
    return compat == "upstream" and p.numel() == 1 and early


def compare_states(ref_sd, opt_sd) -> dict:
    """Worst error per state key (tensors: scaled error; floats: relative; ints and keys: exact)."""
    worst: dict[str, float] = {}
    for pid, ref_state in ref_sd["state"].items():
        opt_state = opt_sd["state"].get(pid, {})
        # the dtype record (reference.checkpoint_layout) restates dtypes, which differ where the fast path works in
        # fp32 (upstream fp64 parameters); the values are compared here
        for key in (set(ref_state) | set(opt_state)) - {DTYPES_KEY}:
            if key not in ref_state or key not in opt_state:
                err = float("inf")
            else:
                a, b = ref_state[key], opt_state[key]
                if torch.is_tensor(a) and a.dim() == 0 and key in SCALE_FLOOR:
                    err = float((a.double() - b.double()).abs()) / SCALE_FLOOR[key]
                elif torch.is_tensor(a):
                    err = scaled_error(a, b)
                elif isinstance(a, float):
                    err = abs(a - b) / max(abs(a), 1e-30)
                else:
                    err = 0.0 if a == b else float("inf")
            worst[key] = max(worst.get(key, 0.0), err)
    return worst


def compare_params(ref_params, opt_params, compat, early: bool) -> float:
    """Worst scaled error over the parameters, leaving out the undefined ones (see `undefined`)."""
    pairs = [(a, b) for a, b in zip(ref_params, opt_params, strict=True) if not undefined(a, compat, early)]
    return max(scaled_error(a, b) for a, b in pairs)


def dequantized(state_dict) -> dict:
    """A state_dict with each `<key>_q`/`<key>_q_scale` pair replaced by the de-quantised `<key>`."""
    state = {}
    for pid, saved in state_dict["state"].items():
        state[pid] = {k: v for k, v in saved.items() if not (k.endswith("_q") or k.endswith("_q_scale"))}
        for k in saved:
            if k.endswith("_q"):
                state[pid][k[:-2]] = blockwise_8bit.dequantize(saved[k], saved[k + "_scale"])
    return {"state": state}


def code_flip_fraction(ref_sd, opt_sd) -> float:
    """Fraction of 8-bit codes that differ between two state_dicts (0 when there are none)."""
    flips = total = 0
    for pid, saved in ref_sd["state"].items():
        for k, codes in saved.items():
            if k.endswith("_q"):
                flips += int((codes != opt_sd["state"][pid][k]).sum())
                total += codes.numel()
    return flips / max(total, 1)


def build(case: OptimizerCase, dtype, compat, seed=0, name="Automagic_CameAMP", partner=optimized):
    """The reference and its partner (`optimized`, or `SELF`: the reference fed perturbed gradients)."""
    ref_params = make_params(dtype, seed)
    opt_params = clone_params(ref_params)
    ref = getattr(reference, name)(ref_params, compat=compat, **case.kwargs)
    opt = make_partner(partner, name, opt_params, compat=compat, **case.kwargs)
    return ref, opt, ref_params, opt_params


# ---------------------------------------------------------------- the reference's own sensitivity to rounding
SELF = "the reference, its gradients perturbed by one rounding error"


def _sum_rounded(f, generator):
    return lambda grads: perturbed(f(grads), generator)


def _residual_inputs_rounded(f, generator):
    return lambda r, u, m_bar, *rest: f(r, perturbed(u, generator), perturbed(m_bar, generator), *rest)


# Where one rounding inside the reference's step decides its result, the perturbed reference gets one there too:
# - a whole param group's sum (AGR's S = Σ|g|): a fast path sums it in another order; where one element holds
#   nearly all of a group's L1 mass, 1 − |g|/S cancels, and S's last bit decides g̃'s leading digits;
# - the AdaBelief residual's inputs u and m̄ (T3): each is the result of rounded operations, which a fast path
#   does in another order or precision. Where r is still ≈ 0 (upstream: from 0, no bias correction) and u − m̄
#   cancels exactly in bf16, r = (1−β3)·ε2 and U = m ⊙ rsqrt(r) is ~1e9·m: whether the two roundings coincided
#   decides a step of 1e6 (found by the differential profile: Automagic_CameAMP_COptim upstream, bf16, an
#   element with a zero first gradient; the fast path, in fp32, stepped 3.75 where the reference stepped 9.5e5).
PERTURBED_CALLS = (
    (reference.agr, "group_abs_sum", _sum_rounded),
    (reference.automagic_cameamp_improved, "group_abs_sum", _sum_rounded),
    (reference.automagic_cameamp_improved_8bit, "group_abs_sum", _sum_rounded),
    (reference.adabelief_residual, "update_residual", _residual_inputs_rounded),
)

# How close to a rounding edge a code's input may lie for another order to decide it: ulps of the magnitudes the
# rounded value is formed from (x, and the block's zero point where it is subtracted): the subtraction and the
# scaling are two roundings. The fast paths' flips seen were 0.5 and 0.94 ulps from the edge (2026-12-06).
NEAR_TIE_ULPS = 2


def _minmax_near_ties_flipped(quantize, _generator):
    def flipped(x, block_size):
        return near_ties_flipped(lambda v: quantize(v, block_size), x, block_size, zero_point=True)

    return flipped


def _blockwise_near_ties_flipped(quantize, _generator):
    def flipped(x, blocksize=blockwise_8bit.BLOCKSIZE, exact_zero=False):
        return near_ties_flipped(lambda v: quantize(v, blocksize, exact_zero), x, blocksize, zero_point=False)

    return flipped


def near_ties_flipped(quantize, x: torch.Tensor, block_size: int, zero_point: bool):
    """`quantize(x)` → (codes, *block statistics), each code whose input lies within NEAR_TIE_ULPS of a rounding
    edge moved to the code on the edge's other side. Found by quantising x with every element moved by that
    window up, then down, inside its block's [min, max] (the block's extremes stay, so its statistics do too)."""
    codes, *stats = quantize(x)
    flat = x.detach().reshape(-1).float()
    if flat.numel() == 0:
        return (codes, *stats)
    blocks = minmax_8bit._blocks(flat, block_size)
    lo, hi = (b.expand_as(blocks).reshape(-1)[: flat.numel()] for b in blocks.aminmax(dim=1, keepdim=True))
    magnitude = flat.abs() + lo.abs() if zero_point else flat.abs()
    window = NEAR_TIE_ULPS * torch.finfo(torch.float32).eps * magnitude
    extreme = (flat == lo) | (flat == hi)
    result, decided = codes.reshape(-1).clone(), torch.zeros_like(extreme)
    for sign in (1, -1):
        moved = torch.where(extreme, flat, torch.clamp(flat + sign * window, lo, hi))
        moved_codes, *moved_stats = quantize(moved.reshape(x.shape))
        assert all(map(torch.equal, stats, moved_stats)), "moving the near-ties changed a block's statistics"
        other = (moved_codes.reshape(-1) != codes.reshape(-1)) & ~decided
        result = torch.where(other, moved_codes.reshape(-1), result)
        decided |= other
    return (result.reshape(codes.shape), *stats)


# An 8-bit code (both codecs) is decided by rounding a scaled value, and where that value lies within NEAR_TIE_ULPS
# of a rounding edge another order of the same operations decides it the other way. Such near-ties are rare, so a
# perturbed run meets the ones a fast path meets only by chance, and one code on the other side can be amplified
# into a large step (seed 004 upstream: a code of m one step off, then of r, whose rsqrt scales the update: 1e-2,
# where a run on the reference's side of it drifts 6e-4). Which side a perturbed run takes depends on the CPU (on
# one all three seeds took the reference's side, on another all took the other), so each perturbation runs twice
# (own_drift): with the codes as they round, and with every near-tie code on its edge's other side; between them,
# both sides of each near-tie.
NEAR_TIE_CALLS = (
    (minmax_8bit, "quantize", _minmax_near_ties_flipped),
    (blockwise_8bit, "quantize", _blockwise_near_ties_flipped),
)


class RoundingPerturbed:
    """An optimizer whose parameters and gradients get a relative error of up to one unit round-off of the
    working precision before each step, and where one rounding inside the step decides its result (PERTURBED_CALLS:
    group sums, the residual's inputs) get one there: what one rounding of the step's inputs, or another order of
    its operations, does. Run beside the unperturbed reference, it measures how far the reference's own run
    carries a rounding error (tolerances.SELF_DIVERGENCE). θ is perturbed too, since some terms depend on it alone
    (the rank penalty's SVD of θ). Its seed, and whether its 8-bit codes at a near-tie take the other side
    (NEAR_TIE_CALLS), are own_drift's current perturbation."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        seed, flip_near_ties = _perturbation[0]
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = PERTURBED_CALLS + (NEAR_TIE_CALLS if flip_near_ties else ())

    @torch.no_grad()
    def step(self, *args, **kwargs):
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_floating_point():
                    p.grad = perturbed(p.grad, self.generator)
                    p.copy_(perturbed(p, self.generator))
        originals = [getattr(module, name) for module, name, _ in self.calls]
        for (module, name, rounded), original in zip(self.calls, originals, strict=True):
            setattr(module, name, rounded(original, self.generator))
        try:
            return self.optimizer.step(*args, **kwargs)
        finally:
            for (module, name, _), original in zip(self.calls, originals, strict=True):
                setattr(module, name, original)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


def perturbed(x: torch.Tensor, generator) -> torch.Tensor:
    """x·(1 + δ·r), r uniform in [−1, 1], δ the unit round-off of the working precision: bf16 for bf16, fp32
    otherwise (the fast path computes fp64 parameters in fp32)."""
    unit = torch.finfo(torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32).eps
    r = torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1
    return (x.double() * (1 + unit * r)).to(x.dtype)


def make_partner(partner, name: str, params, **kwargs):
    """`partner`'s class `name` over `params`; SELF: the reference class, wrapped in RoundingPerturbed."""
    if partner == SELF:
        return RoundingPerturbed(getattr(reference, name)(params, **kwargs))
    return getattr(partner, name)(params, **kwargs)


SELF_SEEDS = (12345, 1, 2)  # the perturbations whose largest drift is the reference's own
# each seed with the 8-bit codes as they round, then with every near-tie on the other side (NEAR_TIE_CALLS)
SELF_PERTURBATIONS = tuple((seed, flip) for seed in SELF_SEEDS for flip in (False, True))
_perturbation = [SELF_PERTURBATIONS[0]]  # the (seed, flip near-ties) a new RoundingPerturbed takes; own_drift sets it


def own_drift(run, enough: float) -> float:
    """The largest of `run()` (a run with a RoundingPerturbed partner) over SELF_PERTURBATIONS, stopping once one
    reaches `enough`: one perturbation is a noisy sample of how far rounding carries the reference."""
    drift = 0.0
    try:
        for perturbation in SELF_PERTURBATIONS:
            _perturbation[0] = perturbation
            drift = max(drift, run())
            if drift >= enough:
                break
    finally:
        _perturbation[0] = SELF_PERTURBATIONS[0]
    return drift


def free_running_limit(err: float, base: float, self_divergence) -> float:
    """The bound a free-running error is held to: `base` (the fixed bound) where the error is within it, else
    the larger of `base` and SELF_DIVERGENCE.bound × the reference's own divergence over the same run
    (`self_divergence()`, computed only then, by own_drift): the fast path may drift no further than a rounding
    error at the input carries the reference. The tests and `make verify` both use it."""
    if err <= base:
        return base
    return max(base, SELF_DIVERGENCE.bound * own_drift(self_divergence, enough=err / SELF_DIVERGENCE.bound))


def assert_free_running(err: float, base: float, self_divergence) -> None:
    """`err` within `free_running_limit`."""
    bound = free_running_limit(err, base, self_divergence)
    assert err <= bound, (
        f"free-running {err:.3e} > {base:g}, and > {SELF_DIVERGENCE.bound:g} × the reference's own drift "
        f"({bound:.3e} in all)"
    )


def lockstep(case: OptimizerCase, dtype, compat, seed=0, name="Automagic_CameAMP") -> dict:
    """Worst error per compared quantity over the case's steps, re-syncing after each step. 8-bit states
    are compared de-quantised, and `code_flips` is the worst fraction of codes that differ."""
    ref, opt, ref_params, opt_params = build(case, dtype, compat, seed, name)
    gen = torch.Generator().manual_seed(seed + 1)
    worst = {"params": 0.0}
    for t in range(1, case.steps + 1):
        grads = make_grads(ref_params, gen)
        set_grads(ref_params, grads)
        set_grads(opt_params, grads)
        ref.step()
        opt.step()
        early = t < case.warmup / 2
        worst["params"] = max(worst["params"], compare_params(ref_params, opt_params, compat, early))
        record_state_errors(worst, ref, opt, t)
        resync(ref, opt, ref_params, opt_params)
    return worst


def record_state_errors(worst: dict, ref, opt, t: int) -> None:
    """Lockstep: the state keys must match; raise `worst` to this step's 8-bit code-flip fraction and
    per-key state errors."""
    ref_sd, opt_sd = ref.state_dict(), opt.state_dict()
    for pid, saved in ref_sd["state"].items():
        assert set(saved) == set(opt_sd["state"][pid]), f"step {t}: state keys differ"
    worst["code_flips"] = max(worst.get("code_flips", 0.0), code_flip_fraction(ref_sd, opt_sd))
    for key, err in compare_states(dequantized(ref_sd), dequantized(opt_sd)).items():
        worst[key] = max(worst.get(key, 0.0), err)


def straight_and_resumed(new_params, new_optimizer, grads, stop_at: int):
    """Parameters after one run over `grads`, and after a run that at step `stop_at` saves (weights_only),
    then continues with a fresh optimizer over fresh parameters holding the saved weights.
    `new_params()` returns (what the optimizer is built from, the parameter list)."""

    def train(stop=None):
        source, params = new_params()
        opt = new_optimizer(source)
        for t, gs in enumerate(grads):
            if t == stop:
                saved = roundtrip(opt.state_dict())
                weights = [p.detach().clone() for p in params]
                source, params = new_params()
                with torch.no_grad():
                    for p, w in zip(params, weights, strict=True):
                        p.copy_(w)
                opt = new_optimizer(source)
                opt.load_state_dict(saved)
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        return params

    return train(), train(stop_at)


def resync(ref, opt, ref_params, opt_params) -> None:
    """Lockstep: give the optimized optimizer the reference's state and parameters. A copy: torch's
    load_state_dict keeps the given tensors where dtype and device match, and the reference's next step
    would then update the optimized optimizer's states in place too."""
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    with torch.no_grad():
        for a, b in zip(ref_params, opt_params, strict=True):
            b.copy_(a)


def free_running(case: OptimizerCase, dtype, compat, seed=0, name="Automagic_CameAMP", partner=optimized) -> float:
    """Worst parameter error over the case's steps without re-syncing. A parameter that took an
    undefined step (see `undefined`) keeps its different value, so it stays out for the whole run."""
    ref, opt, ref_params, opt_params = build(case, dtype, compat, seed, name, partner)
    gen = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for _ in range(case.steps):
        grads = make_grads(ref_params, gen)
        set_grads(ref_params, grads)
        set_grads(opt_params, grads)
        ref.step()
        opt.step()
        worst = max(worst, compare_params(ref_params, opt_params, compat, early=case.warmup >= 2))
    return worst


def roundtrip(state_dict):
    """Save and load back with `weights_only=True`, as a checkpoint would."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def same_state(a: dict, b: dict) -> bool:
    """Whether two state dicts' `state` are equal: the same entries and keys, tensors equal in value and dtype,
    other values equal."""
    if a["state"].keys() != b["state"].keys():
        return False
    for pid, sa in a["state"].items():
        sb = b["state"][pid]
        if sa.keys() != sb.keys():
            return False
        for k, v in sa.items():
            w = sb[k]
            if torch.is_tensor(v) != torch.is_tensor(w):
                return False
            if torch.is_tensor(v) and not (v.dtype == w.dtype and torch.equal(v, w)):
                return False
            if not torch.is_tensor(v) and v != w:
                return False
    return True
