"""Randomised differential verification: `optimized` against `reference` over the whole configuration space.

A draw (`Draw`, from the hypothesis strategy `draws`) is a class, a compat mode, a parameter dtype (fp32, bf16,
fp64), keyword arguments from the class's documented options (warm-up 0-15, so every phase is reached), 1-12
tensors of random shapes (0-d, one-element, 1×N, N×1, LoRA-named pairs, 4-D, non-contiguous) in 1-3 param
groups, a gradient scale per tensor in 1e-8..1e3 with exactly-zero elements and all-zero gradients, and some
(step, tensor) pairs without a gradient. `check(draw)` runs it and returns what failed, by check:

  crash      both packages construct and step without raising;
  nonfinite  finite gradients in, finite parameters out (both packages). In upstream mode, where upstream's
             own numerics leave the finite range (its 8bit class on tiny bf16 gradients), the reference does
             too, by design; the draw then passes if the fast path is nonfinite at exactly the same elements;
  lockstep   each step from identical state: the parameters within the lockstep bound, or within
             SELF_DIVERGENCE × the reference's own one-step sensitivity (harness.RoundingPerturbed, the largest
             over harness.SELF_PERTURBATIONS where the first does not suffice). Each re-sync
             loads the reference's state_dict into the optimized optimizer: the cross-implementation load;
  free       a free run: the parameters within the free-running bound, or within SELF_DIVERGENCE × the
             reference's own drift over the same run (harness.assert_free_running);
  resume     save (weights_only) halfway, load into a fresh optimizer over fresh parameters, continue:
             bit-identical to not stopping, in both packages.

`test_differential.py` runs a small derandomized profile in `make test` (hypothesis shrinks a failing draw);
`verify` runs the thorough one and counts the outcomes per class.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

import optimized
import reference
from reference.contextual_lr import PRESETS

from .harness import SELF, RoundingPerturbed, clone_named, own_drift, roundtrip
from .tolerances import (
    FREE_RUNNING_8BIT_FP32,
    FREE_RUNNING_BF16,
    FREE_RUNNING_FP32,
    FREE_RUNNING_MINMAX_FP32,
    LOCKSTEP_8BIT_UPSTREAM,
    LOCKSTEP_BF16,
    LOCKSTEP_FP32,
    SELF_DIVERGENCE,
    scaled_error,
)

AUTOMAGIC = ("Automagic_CameAMP", "Automagic_CameAMP8bit", "Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit")
IMPROVED = ("Automagic_CameAMP_Improved", "Automagic_CameAMP_8Bit", "Automagic_CameAMP_Improved_8Bit")
CLASSES = (*AUTOMAGIC, *IMPROVED, "HinaAdamWOptimizer")
EIGHT_BIT = ("Automagic_CameAMP8bit", "Automagic_CameAMP_COptim8bit", "Automagic_CameAMP_8Bit",
             "Automagic_CameAMP_Improved_8Bit")  # fmt: skip
COMPATS = ("upstream", "fixed")
DTYPES = (torch.float32, torch.bfloat16, torch.float64)
CHECKS = ("crash", "nonfinite", "lockstep", "free", "resume")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple
    transposed: bool = False  # stored as the transpose of a contiguous tensor (2-D only)
    zero_init: bool = False  # a LoRA B starts at 0
    scale: float = 1.0  # gradient scale
    zero_fraction: float = 0.0  # fraction of gradient elements that are exactly 0 (1: an all-zero gradient)


@dataclass(frozen=True)
class Draw:
    name: str
    compat: str
    dtype: torch.dtype
    kwargs: dict
    tensors: tuple[Tensor, ...]
    groups: tuple[int, ...]  # the param group of each tensor
    steps: int
    missing: frozenset  # (step, tensor) pairs without a gradient
    with_loss: bool  # COptim: pass a loss to every step
    seed: int


# ---------------------------------------------------------------- the strategy
def _automagic_kwargs(name: str, compat: str):
    options = {
        "lr": st.sampled_from([1e-4, 1e-3, 1e-2]),
        "warmup_steps": st.integers(0, 15),
        "came": st.booleans(),
        "full_finetune": st.booleans(),
        "weight_decay": st.sampled_from([0.0, 5e-4, 1e-2]),
        "clip_threshold": st.sampled_from([0.5, 1.0]),
        "betas": st.sampled_from([(0.8, 0.99, 0.999), (0.7, 0.95, 0.99)]),
        "eps": st.sampled_from([(1e-30, 1e-16, 1e-8), (1e-20, 1e-12, 1e-8)]),
        "beta1_decay": st.sampled_from([0.9995, 0.99]),
        "max_lr": st.sampled_from([1e-3, 5e-2]),
        "lr_bump": st.sampled_from([3e-6, 1e-4]),
    }
    if compat == "fixed":
        options["wd_until"] = st.sampled_from(["warmup_half", "always"])
    if "COptim" in name:
        options["momentum_scales"] = st.sampled_from([(1, 5, 20, 100), (1, 3)])
        options["preset"] = st.sampled_from(sorted(PRESETS))
    return options


def _improved_common():
    return {
        "lr": st.sampled_from([1e-4, 1e-3, 1e-2]),
        "warmup_steps": st.integers(0, 15),
        "came": st.booleans(),
        "weight_decay": st.sampled_from([0.0, 5e-4, 1e-2]),
        "max_lr": st.sampled_from([1e-3, 5e-2]),
        "lr_bump": st.sampled_from([3e-6, 1e-4]),
        "betas": st.sampled_from([(0.8, 0.99, 0.999), (0.9, 0.95, 0.99)]),
        "edge_suppression": st.booleans(),
        "edge_threshold": st.sampled_from([0.6, 0.01]),
        "edge_penalty": st.sampled_from([0.1, 0.5]),
        "background_regularization": st.booleans(),
        "spatial_awareness": st.booleans(),
        "lora_rank_penalty": st.booleans(),
    }


def _kwargs_options(name: str, compat: str) -> dict:
    if name in AUTOMAGIC:
        return _automagic_kwargs(name, compat)
    if name == "Automagic_CameAMP_Improved":
        extra = {"enable_dual_momentum": st.booleans(), "use_approximate_svd": st.booleans(),
                 "d_coef": st.sampled_from([2.0, 3.0])}  # fmt: skip
        return {**_improved_common(), **extra}
    if name == "Automagic_CameAMP_8Bit":
        extra = {"quantize_states": st.booleans(), "error_correction": st.booleans(),
                 "mixed_precision": st.booleans(), "block_size": st.sampled_from([64, 128, 256]),
                 "sync_frequency": st.sampled_from([0, 4, 100])}  # fmt: skip
        return {**_improved_common(), **extra}
    if name == "Automagic_CameAMP_Improved_8Bit":
        extra = {"min_8bit_size": st.sampled_from([0, 64, 4096]), "force_8bit": st.booleans(),
                 "adaptation_rate": st.sampled_from([0.25, 0.5])}  # fmt: skip
        return {**_improved_common(), **extra}
    return {  # HinaAdamWOptimizer
        "lr": st.sampled_from([1e-4, 1e-3, 3e-3]),
        "betas": st.sampled_from([(0.9, 0.999), (0.8, 0.99)]),
        "eps": st.sampled_from([1e-8, 1e-30]),
        "weight_decay": st.sampled_from([0.0, 1e-2, 0.1]),
        "optim_bits": st.sampled_from([32, 8]),
        "min_8bit_size": st.sampled_from([0, 64, 4096]),
        **{flag: st.booleans() for flag in ("use_spd", "use_cautious", "use_orthogonal_grad", "use_adopt_stability",
                                           "use_grams", "use_agr", "use_tam", "use_alora", "dynamic_weight_decay")},
        "tam_beta": st.sampled_from([0.999, 0.9]),
        "alora_ratio": st.sampled_from([16.0, 4.0]),
        "wd_transition_steps": st.sampled_from([3, 1000]),
    }  # fmt: skip


SIZES = st.sampled_from([2, 3, 5, 8, 17, 33])
SCALES = st.sampled_from([1e-8, 1e-4, 1e-2, 1.0, 1e3])
ZERO_FRACTIONS = st.sampled_from([0.0, 0.0, 0.3, 1.0])


@st.composite
def _tensor_group(draw, index: int) -> list[Tensor]:
    """One tensor, or a LoRA pair (down r×n, up m×r; up starts at 0 half the time)."""
    kind = draw(st.sampled_from(["0-d", "one", "row", "column", "vector", "matrix", "conv", "lora", "large"]))
    base = f"layer{index}"
    if kind == "lora":
        rank, n, m = draw(st.sampled_from([1, 2, 4])), draw(SIZES), draw(SIZES)
        zero = draw(st.booleans())
        down = Tensor(f"{base}.lora_down.weight", (rank, n), scale=draw(SCALES), zero_fraction=draw(ZERO_FRACTIONS))
        up = Tensor(f"{base}.lora_up.weight", (m, rank), zero_init=zero, scale=draw(SCALES),
                    zero_fraction=draw(ZERO_FRACTIONS))  # fmt: skip
        return [down, up]
    shape = {
        "0-d": (),
        "one": draw(st.sampled_from([(1,), (1, 1)])),
        "row": (1, draw(SIZES)),
        "column": (draw(SIZES), 1),
        "vector": (draw(SIZES),),
        "matrix": (draw(SIZES), draw(SIZES)),
        "conv": (draw(st.sampled_from([2, 4])), draw(st.sampled_from([1, 3])), 3, 3),
        "large": (100, 120),
    }[kind]
    transposed = len(shape) == 2 and draw(st.booleans())
    return [Tensor(f"{base}.weight", shape, transposed, False, draw(SCALES), draw(ZERO_FRACTIONS))]


@st.composite
def draws(draw, classes=CLASSES, compats=COMPATS) -> Draw:
    name = draw(st.sampled_from(classes))
    compat = draw(st.sampled_from(compats))
    dtype = draw(st.sampled_from(DTYPES))
    options = _kwargs_options(name, compat)
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=len(options)))
    kwargs = {key: draw(options[key]) for key in sorted(chosen)}
    if name != "HinaAdamWOptimizer":
        kwargs.setdefault("warmup_steps", draw(st.integers(0, 15)))
        kwargs.setdefault("lr", 1e-3)
    if name == "Automagic_CameAMP_Improved_8Bit":
        kwargs.setdefault("min_8bit_size", 64)
    if name == "HinaAdamWOptimizer" and compat == "upstream" and kwargs.get("use_adopt_stability", True):
        # upstream's unfloored stale v̄ divides the step after an all-zero first gradient element by ε
        # (reference.hina_adamw); with ε = 1e-30 θ reaches ~1e23, where upstream's own fp32 norms overflow
        kwargs.pop("eps", None)
    tensors = []
    for index in range(draw(st.integers(1, 8))):
        tensors.extend(draw(_tensor_group(index)))
    tensors = tuple(tensors[:12])
    n_groups = draw(st.integers(1, min(3, len(tensors))))
    groups = tuple(draw(st.integers(0, n_groups - 1)) for _ in tensors)
    warmup = kwargs.get("warmup_steps", 0)
    steps = draw(st.integers(2, 4)) + (2 * warmup if name != "HinaAdamWOptimizer" else draw(st.integers(2, 10)))
    missing = draw(st.frozensets(st.tuples(st.integers(1, steps), st.integers(0, len(tensors) - 1)), max_size=6))
    with_loss = "COptim" in name and draw(st.booleans())
    return Draw(name, compat, dtype, kwargs, tensors, groups, steps, missing, with_loss, draw(st.integers(0, 2**16)))


# ---------------------------------------------------------------- running a draw
def make_params(d: Draw) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(d.seed)
    named = []
    for spec in d.tensors:
        shape = spec.shape[::-1] if spec.transposed else spec.shape
        value = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5
        value = value * 0 if spec.zero_init else value
        value = value.to(d.dtype)
        named.append((spec.name, torch.nn.Parameter(value.t() if spec.transposed else value)))
    return named


def param_groups(d: Draw, named) -> list[dict]:
    """The draw's groups, each with its own lr (×1, ×0.5, ×2 of the draw's) and its parameters' names."""
    lr = d.kwargs.get("lr", 1e-3)
    groups = []
    for g, factor in enumerate((1.0, 0.5, 2.0)):
        members = [(n, p) for (n, p), gi in zip(named, d.groups, strict=True) if gi == g]
        if members:
            names, params = zip(*members, strict=True)
            groups.append({"params": list(params), "param_names": list(names), "lr": lr * factor})
    return groups


def build(d: Draw, package, named):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if package == SELF:
            return RoundingPerturbed(getattr(reference, d.name)(param_groups(d, named), compat=d.compat, **d.kwargs))
        return getattr(package, d.name)(param_groups(d, named), compat=d.compat, **d.kwargs)


def gradients(d: Draw) -> list[list[torch.Tensor | None]]:
    """The gradient of every tensor at every step (None where missing)."""
    gen = torch.Generator().manual_seed(d.seed + 1)
    schedule = []
    for t in range(1, d.steps + 1):
        step = []
        for i, spec in enumerate(d.tensors):
            g = torch.randn(spec.shape, generator=gen, dtype=torch.float64) * spec.scale
            keep = torch.rand(spec.shape, generator=gen, dtype=torch.float64) >= spec.zero_fraction
            step.append(None if (t, i) in d.missing else (g * keep).to(d.dtype))
        schedule.append(step)
    return schedule


def losses(d: Draw) -> list[float | None]:
    gen = torch.Generator().manual_seed(d.seed + 2)
    return [float(1.0 / (1 + t) + 0.01 * torch.rand((), generator=gen)) if d.with_loss else None
            for t in range(d.steps)]  # fmt: skip


def step(opt, named, grads, loss) -> None:
    for (_, p), g in zip(named, grads, strict=True):
        p.grad = None if g is None else g.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step() if loss is None else opt.step(loss=loss)


def compared(d: Draw) -> list[bool]:
    """Which tensors are compared: not one-element tensors in upstream mode once an early phase (t < W/2) ran,
    where the Automagic family's OrthoGrad step is rounding noise rescaled to full size (harness.undefined);
    none for upstream Automagic_CameAMP8bit with bf16 parameters (tolerances.LOCKSTEP_8BIT_UPSTREAM: its
    fresh residual amplifies bf16 arithmetic that the fast path does in fp32 beyond the parameters' scale), and
    none in upstream mode with fp64 parameters: there the reference (as upstream) computes in fp64 and the fast
    path in fp32, its one working precision, and where upstream's OrthoGrad cancels (an update nearly parallel to
    θ) fp32 leaves rounding noise that the normalisation scales up to a full step (found here: 4e-2 in 1,000)."""
    if d.compat == "upstream" and d.name == "Automagic_CameAMP8bit" and d.dtype == torch.bfloat16:
        return [False] * len(d.tensors)
    if d.compat == "upstream" and d.dtype == torch.float64:
        return [False] * len(d.tensors)
    noise = d.compat == "upstream" and d.name != "HinaAdamWOptimizer" and d.kwargs.get("warmup_steps", 0) > 2
    return [not (noise and math.prod(t.shape) == 1) for t in d.tensors]


def params_error(d: Draw, a_named, b_named) -> float:
    pairs = zip(a_named, b_named, compared(d), strict=True)
    return max((scaled_error(a, b) for (_, a), (_, b), keep in pairs if keep), default=0.0)


def all_finite(named) -> bool:
    return all(bool(torch.isfinite(p).all()) for _, p in named)


def upstream_own_overflow(d: Draw, ref_named, opt_named) -> bool:
    """Upstream mode, the reference (upstream's numerics) nonfinite, and the fast path at exactly its elements."""
    pairs = zip(ref_named, opt_named, strict=True)
    return (d.compat == "upstream" and not all_finite(ref_named)
            and all(torch.equal(torch.isfinite(a), torch.isfinite(b)) for (_, a), (_, b) in pairs))  # fmt: skip


def resync(source, target, source_named, target_named) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target.load_state_dict(copy.deepcopy(source.state_dict()))
    with torch.no_grad():
        for (_, a), (_, b) in zip(source_named, target_named, strict=True):
            b.copy_(a)


def lockstep_bound(d: Draw) -> float:
    if d.dtype == torch.bfloat16:
        return LOCKSTEP_BF16.bound
    if d.compat == "upstream" and d.name == "Automagic_CameAMP8bit":
        return LOCKSTEP_8BIT_UPSTREAM.bound
    return LOCKSTEP_FP32.bound


def free_running_bound(d: Draw) -> float:
    if d.dtype == torch.bfloat16:
        return FREE_RUNNING_BF16.bound
    if d.name == "Automagic_CameAMP_8Bit":
        return FREE_RUNNING_MINMAX_FP32.bound
    if d.name in EIGHT_BIT or (d.name == "HinaAdamWOptimizer" and d.kwargs.get("optim_bits") == 8):
        return FREE_RUNNING_8BIT_FP32.bound
    return FREE_RUNNING_FP32.bound


def run_lockstep(d: Draw, schedule, loss_schedule) -> list[str]:
    named = make_params(d)
    pair = {pkg: clone_named(named) for pkg in (optimized, SELF)}
    ref = build(d, reference, named)
    opt, pert = build(d, optimized, pair[optimized]), build(d, SELF, pair[SELF])
    failures = []
    for t, (grads, loss) in enumerate(zip(schedule, loss_schedule, strict=True), start=1):
        for o, ps in ((ref, named), (opt, pair[optimized]), (pert, pair[SELF])):
            step(o, ps, grads, loss)
        if upstream_own_overflow(d, named, pair[optimized]):
            return []
        if not (all_finite(named) and all_finite(pair[optimized])):
            return [f"nonfinite: step {t}"]
        err, own = params_error(d, named, pair[optimized]), params_error(d, named, pair[SELF])
        enough = err / SELF_DIVERGENCE.bound
        if err > lockstep_bound(d) and own < enough:  # one perturbation is a noisy sample: try the others
            own = max(own, own_drift(lambda t=t: own_lockstep_error(d, schedule, loss_schedule, t), enough))
        if err > max(lockstep_bound(d), SELF_DIVERGENCE.bound * own):
            failures.append(f"lockstep: step {t}: {err:.3e} (bound {lockstep_bound(d):g}, reference's own {own:.3e})")
            break
        resync(ref, opt, named, pair[optimized])
        resync(ref, pert.optimizer, named, pair[SELF])
    return failures


def own_lockstep_error(d: Draw, schedule, loss_schedule, stop: int) -> float:
    """The reference against a RoundingPerturbed copy of itself, in lockstep to step `stop`: its error there."""
    named = make_params(d)
    other = clone_named(named)
    ref, pert = build(d, reference, named), build(d, SELF, other)
    for t, (grads, loss) in enumerate(zip(schedule[:stop], loss_schedule[:stop], strict=True), start=1):
        step(ref, named, grads, loss)
        step(pert, other, grads, loss)
        if t < stop:
            resync(ref, pert.optimizer, named, other)
    return params_error(d, named, other)


def free_run(d: Draw, partner, schedule, loss_schedule, stop=None) -> tuple:
    """The reference and `partner` run freely on the same gradients. Returns the worst parameter error along the
    way, both final parameter lists and, with `stop`, both optimizers' checkpoints (weights_only round trip) and
    weights taken before step `stop` + 1."""
    named = make_params(d)
    other = clone_named(named)
    pair = ((build(d, reference, named), named), (build(d, partner, other), other))
    worst, saved = 0.0, []
    for t, (grads, loss) in enumerate(zip(schedule, loss_schedule, strict=True)):
        if t == stop:
            saved = [(roundtrip(o.state_dict()), [p.detach().clone() for _, p in ps]) for o, ps in pair]
        for o, ps in pair:
            step(o, ps, grads, loss)
        worst = max(worst, params_error(d, named, other))
    return worst, named, other, saved


def resumed(d: Draw, package, saved, schedule, loss_schedule, stop: int):
    """A fresh optimizer over fresh parameters, loaded from `saved` (checkpoint, weights), run to the end."""
    state, weights = saved
    named = make_params(d)
    with torch.no_grad():
        for (_, p), w in zip(named, weights, strict=True):
            p.copy_(w)
    opt = build(d, package, named)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.load_state_dict(state)
    for grads, loss in zip(schedule[stop:], loss_schedule[stop:], strict=True):
        step(opt, named, grads, loss)
    return named


def run_free(d: Draw, schedule, loss_schedule) -> list[str]:
    """The free run, then each package resumed from its own checkpoint halfway."""
    stop = d.steps // 2
    err, ref_named, opt_named, saved = free_run(d, optimized, schedule, loss_schedule, stop)
    if upstream_own_overflow(d, ref_named, opt_named):
        return []
    if not all_finite(ref_named) or not all_finite(opt_named):
        return ["nonfinite: free run"]
    failures = []
    if err > free_running_bound(d):
        own = own_drift(lambda: free_run(d, SELF, schedule, loss_schedule)[0], enough=err / SELF_DIVERGENCE.bound)
        if err > SELF_DIVERGENCE.bound * own:
            failures.append(f"free: {err:.3e} (bound {free_running_bound(d):g}, reference's own {own:.3e})")
    for package, straight, checkpoint in zip((reference, optimized), (ref_named, opt_named), saved, strict=True):
        again = resumed(d, package, checkpoint, schedule, loss_schedule, stop)
        if any(not torch.equal(a, b) for (_, a), (_, b) in zip(again, straight, strict=True)):
            failures.append(f"resume: {package.__name__} not bit-identical after loading at step {stop}")
    return failures


def check(d: Draw) -> list[str]:
    """What failed for this draw (empty: every check passed), each line starting with its check's name."""
    schedule, loss_schedule = gradients(d), losses(d)
    try:
        failures = run_lockstep(d, schedule, loss_schedule)
        return failures or run_free(d, schedule, loss_schedule)
    except Exception as error:  # a crash is a finding, reported with its draw
        return [f"crash: {type(error).__name__}: {error}"]


# ---------------------------------------------------------------- the thorough profile (`make verify`)
def profile(draws_per_class: int, seed: int = 0) -> tuple[dict, list]:
    """`draws_per_class` hypothesis draws of every class (generation only, no shrinking, seeded), run eagerly:
    the compiled graphs are the same functions (optimized/compile.py), checked by test_compile and verify's
    compiled rows, and a random draw's shapes and options would compile hundreds of variants. Returns
    {class: {check: count of draws that failed it, "draws": count}} and the failures as (draw, line)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    counts = {name: dict.fromkeys(("draws", *CHECKS), 0) for name in CLASSES}
    failures = []
    for name in CLASSES:

        @hypothesis_seed(seed)
        @settings(max_examples=draws_per_class, derandomize=False, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(d=draws(classes=(name,)))
        def run(d):
            counts[d.name]["draws"] += 1
            found = check(d)
            for kind in {line.split(":")[0] for line in found}:
                counts[d.name][kind] += 1
            failures.extend((d, line) for line in found)

        run()
    return counts, failures
