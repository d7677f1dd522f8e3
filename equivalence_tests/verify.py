"""The verification report (`make verify`): optimized path vs reference, one row per technique and per
optimizer configuration, printed and written to reports/verification.md. Exits 1 if any row fails.

Set UPSTREAM_AUTOMAGIC=path/to/library/automagic_cameamp.py (hinablue/sd-scripts @ 863c5b5) to add the
reference-vs-upstream rows (tools/upstream_parity.py), and UPSTREAM_IMPROVED=path/to/library/
automagic_cameamp_improved.py (@ 803cb56) for Automagic_CameAMP_Improved's (tools/upstream_improved_parity.py)
UPSTREAM_S2O=the same file @ 0b433bc for seed 004's Automagic_CameAMP_8Bit (tools/upstream_s2o_parity.py), and
UPSTREAM_IMPROVED_8BIT=path/to/library/automagic_cameamp_improved_8bit.py (@ 863c5b5) for
Automagic_CameAMP_Improved_8Bit (tools/upstream_improved8_parity.py); the files are not part of this repository.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import optimized
import papers

from . import differential
from .harness import OPTIMIZER_CASES, SELF, free_running, free_running_limit, lockstep
from .technique_cases import TECHNIQUE_CASES
from .tolerances import (
    ALLORA_GRADIENT_FP64,
    LOCKSTEP_8BIT_FLIPS,
    LOCKSTEP_8BIT_STATES,
    ORACLE_FP32,
    TECHNIQUE_FP32,
    free_running_tolerance,
    lockstep_tolerance,
    momentum_tolerance,
    scaled_error,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPE_SETS = [
    [(), (37,), (16, 768), (768, 16)],
    [(8, 4, 3, 3), (5, 7), (1,), (300,)],
    [(64, 16), (16, 64), (3,)],
]
SEEDS = range(3)


def free_row(name: str, source: str, error_of, base: float) -> list:
    """A free-running row: `error_of(optimized)`'s error against the bound the tests hold it to: `base`, or where
    the error is beyond it, the reference's own drift over the same run (harness.free_running_limit)."""
    err = error_of(optimized)
    return [name, source, None, err, free_running_limit(err, base, lambda: error_of(SELF))]


def technique_rows():
    index = papers.by_key()
    rows = []
    for case in TECHNIQUE_CASES:
        worst_abs = worst_rel = 0.0
        for shapes in SHAPE_SETS:
            for seed in SEEDS:
                for _, ref, opt, *terms in case.run(torch.Generator().manual_seed(seed), shapes):
                    worst_rel = max(worst_rel, scaled_error(ref, opt, *terms))
                    if ref.numel():
                        worst_abs = max(worst_abs, float((ref.double() - opt.double()).abs().max()))
        paper = index[case.paper]
        title = paper["title"].split(" (later")[0].split(":")[0]
        source = f"{title} ({paper['arxiv'] or 'code'})"
        rows.append([f"{case.technique} {case.name}", source, worst_abs, worst_rel, TECHNIQUE_FP32.bound])
    return rows


def optimizer_rows():
    rows = []
    for spec, cls_name in (("O1", "Automagic_CameAMP"), ("O4", "Automagic_CameAMP_COptim")):
        for case in OPTIMIZER_CASES:
            for compat in ("upstream", "fixed"):
                for dtype in (torch.float32, torch.bfloat16):
                    dt = str(dtype).replace("torch.", "")
                    lock = lockstep(case, dtype, compat, name=cls_name)
                    name = f"{spec} {cls_name} {compat} {dt} [{case.name}]"
                    others = {k: v for k, v in lock.items() if k != "exp_avg"}
                    rows.append([f"{name} lockstep (worst: {max(others, key=others.get)})", f"optimizers.md {spec}",
                                 None, max(others.values()), lockstep_tolerance(dtype).bound])  # fmt: skip
                    rows.append([f"{name} lockstep exp_avg", f"optimizers.md {spec}", None, lock["exp_avg"],
                                 momentum_tolerance(dtype, cls_name, compat).bound])  # fmt: skip
                    rows.append(free_row(f"{name} free-running {case.steps} steps", f"optimizers.md {spec}",
                                         lambda p, c=case, d=dtype, m=compat, n=cls_name: free_running(
                                             c, d, m, name=n, partner=p),
                                         free_running_tolerance(dtype).bound))  # fmt: skip
    return rows


def eight_bit_rows():
    """The optimized 8-bit classes against the reference: parameters, de-quantised states, code flips."""
    from .cases.eight_bit import MODES, NAMES, free_running_bound, param_bound

    rows = []
    for cls_name, spec in zip(NAMES, ("O2", "O5"), strict=True):
        for case in OPTIMIZER_CASES:
            for compat, dtype in MODES:
                dt = str(dtype).replace("torch.", "")
                name = f"{spec} {cls_name} {compat} {dt} [{case.name}]"
                lock = lockstep(case, dtype, compat, name=cls_name)
                states = max(v for k, v in lock.items() if k not in ("params", "code_flips"))
                rows += [
                    [f"{name} lockstep parameters", f"optimizers.md {spec}", None, lock["params"],
                     param_bound(cls_name, compat, dtype)],
                    [f"{name} lockstep states (de-quantised)", "techniques.md T19a", None, states,
                     LOCKSTEP_8BIT_STATES.bound],
                    [f"{name} lockstep codes that differ (fraction)", "techniques.md T19a", None, lock["code_flips"],
                     LOCKSTEP_8BIT_FLIPS.bound],
                    free_row(f"{name} free-running {case.steps} steps", f"optimizers.md {spec}",
                             lambda p, c=case, d=dtype, m=compat, n=cls_name: free_running(
                                 c, d, m, name=n, partner=p),
                             free_running_bound(cls_name, compat, dtype)),
                ]  # fmt: skip
    return rows


def hina_rows():
    """optimized.HinaAdamWOptimizer against the reference (O9): every case, mode and dtype."""
    from .cases.hina import COMPATS, DTYPES, HINA_CASES, free_running_bound, lockstep, lockstep_bounds
    from .cases.hina import free_running as hina_free_running

    rows = []
    for case in HINA_CASES:
        for compat in COMPATS:
            for dtype in DTYPES:
                dt = str(dtype).replace("torch.", "")
                name = f"O9 HinaAdamWOptimizer {compat} {dt} [{case.name}]"
                lock = lockstep(case, dtype, compat)
                bounds = lockstep_bounds(case, dtype, lock)
                worst = max(lock, key=lambda k: lock[k] / bounds[k])
                rows.append([f"{name} lockstep (worst: {worst})", "optimizers.md O9", None, lock[worst],
                             bounds[worst]])  # fmt: skip
                rows.append(free_row(f"{name} free-running {case.steps} steps", "optimizers.md O9",
                                     lambda p, c=case, d=dtype, m=compat: hina_free_running(c, d, m, partner=p),
                                     free_running_bound(case, dtype)))  # fmt: skip
    return rows


def eager_then_compiled(eager, compiled) -> list:
    """The rows of `eager()`, run uncompiled, then of `compiled(label)` in the current compile mode
    (label: "compiled", or "eager" when compiling is off); the mode is restored."""
    import optimized

    compiling = optimized.compile_enabled()
    try:
        optimized.set_compile(False)
        rows = eager()
        optimized.set_compile(compiling)
        return rows + compiled("compiled" if compiling else "eager")
    finally:
        optimized.set_compile(compiling)


def improved_rows():
    """optimized.Automagic_CameAMP_Improved against the reference (O6): every case, mode and dtype on the
    full shape set uncompiled (the same code; each stack class is a graph per phase, ~250 graphs for the
    matrix), and compiled on the test's smaller shape set for every case."""

    from .cases import improved as imp
    from .tolerances import free_running_tolerance, lockstep_tolerance

    def rows_for(case, compat, dtype, label, shapes=None):
        name = f"O6 Automagic_CameAMP_Improved {compat} {str(dtype).replace('torch.', '')} [{case}] {label}"
        lock = imp.run(case, dtype, compat, lockstep=True, shapes=shapes)
        worst = max(lock, key=lock.get)
        free = lambda p: imp.run(case, dtype, compat, lockstep=False, shapes=shapes, partner=p)["params"]  # noqa: E731
        return [[f"{name} lockstep (worst: {worst})", "optimizers.md O6", None, lock[worst],
                 lockstep_tolerance(dtype).bound],
                free_row(f"{name} free-running {imp.STEPS} steps", "optimizers.md O6", free,
                         free_running_tolerance(dtype).bound)]  # fmt: skip

    def eager():
        return [row for case, compat, dtype in imp.MATRIX for row in rows_for(case, compat, dtype, "eager")]

    def compiled(label):
        return [row for case in imp.CASES for compat, dtype in imp.COMPILED
                for row in rows_for(case, compat, dtype, label, imp.COMPILED_SHAPES)]  # fmt: skip

    return eager_then_compiled(eager, compiled)


def seed004_rows():
    """optimized.Automagic_CameAMP_8Bit (seed 004) against the reference (O8): every case, mode and dtype on
    the full shape set uncompiled; compiled, every case on matrices and the first on every stack class."""

    from .cases import seed004 as s4
    from .cases.improved import STEPS
    from .tolerances import lockstep_tolerance

    def rows_for(case, compat, dtype, label, shapes=None):
        name = f"O8 Automagic_CameAMP_8Bit {compat} {str(dtype).replace('torch.', '')} [{case}] {label}"
        lock = s4.run(case, dtype, compat, lockstep=True, shapes=shapes)
        steps = lock.pop("code_steps")
        params = lock.pop("params")
        worst = max(lock, key=lock.get)
        free = lambda p: s4.run(case, dtype, compat, lockstep=False, shapes=shapes, partner=p)["params"]  # noqa: E731
        return [[f"{name} lockstep params", "optimizers.md O8", None, params, lockstep_tolerance(dtype).bound],
                [f"{name} lockstep D(q)+e (worst: {worst})", "optimizers.md O8, T18", None, lock[worst],
                 s4.state_bound(case, dtype)],
                [f"{name} lockstep codes, in code steps", "techniques.md T18", None, steps,
                 s4.code_step_bound(compat, dtype)],
                free_row(f"{name} free-running {STEPS} steps", "optimizers.md O8", free,
                         s4.free_running_bound(dtype))]  # fmt: skip

    def eager():
        return [row for case, compat, dtype in s4.MATRIX for row in rows_for(case, compat, dtype, "eager")]

    def compiled(label):
        rows = []
        for compat, dtype in s4.COMPILED:
            for case in s4.CASES:
                rows += rows_for(case, compat, dtype, f"{label}, matrices", s4.MAKE_TEST_COMPILED_SHAPES)
            rows += rows_for(next(iter(s4.CASES)), compat, dtype, f"{label}, every class", s4.COMPILED_SHAPES)
        return rows

    return eager_then_compiled(eager, compiled)


def improved8_rows():
    """optimized.Automagic_CameAMP_Improved_8Bit against the reference (O7): every case, mode and dtype on the
    full shape set uncompiled; compiled, every case on LoRA matrices and the first on every stack class."""

    from .cases import improved8 as i8
    from .cases.improved import STEPS
    from .tolerances import LOCKSTEP_8BIT_FLIPS_SMALL_SETS, LOCKSTEP_8BIT_STATES, lockstep_tolerance

    def rows_for(case, compat, dtype, label, shapes=None, lora=None):
        name = f"O7 Automagic_CameAMP_Improved_8Bit {compat} {str(dtype).replace('torch.', '')} [{case}] {label}"
        lock = i8.run(case, dtype, compat, lockstep=True, shapes=shapes, lora=lora)
        flips = lock.pop("code_flips")
        params = lock.pop("params")
        worst = max(lock, key=lock.get)
        state_bound = max(lockstep_tolerance(dtype).bound, LOCKSTEP_8BIT_STATES.bound)
        free = lambda p: i8.run(case, dtype, compat, lockstep=False, shapes=shapes, lora=lora, partner=p)["params"]  # noqa: E731
        return [[f"{name} lockstep params", "optimizers.md O7", None, params, lockstep_tolerance(dtype).bound],
                [f"{name} lockstep states, de-quantised (worst: {worst})", "optimizers.md O7, T19c", None,
                 lock[worst], state_bound],
                [f"{name} lockstep codes that differ (fraction)", "techniques.md T19a", None, flips,
                 LOCKSTEP_8BIT_FLIPS_SMALL_SETS.bound],
                free_row(f"{name} free-running {STEPS} steps", "optimizers.md O7", free,
                         i8.free_running_bound(dtype))]  # fmt: skip

    def eager():
        return [row for case, compat, dtype in i8.MATRIX for row in rows_for(case, compat, dtype, "eager")]

    def compiled(label):
        rows = []
        for compat, dtype in i8.COMPILED:
            for case in i8.CASES:
                rows += rows_for(case, compat, dtype, f"{label}, LoRA matrices", i8.MAKE_TEST_COMPILED_SHAPES,
                                 i8.MAKE_TEST_COMPILED_LORA)  # fmt: skip
            rows += rows_for(next(iter(i8.CASES)), compat, dtype, f"{label}, every class", i8.COMPILED_SHAPES)
        return rows

    return eager_then_compiled(eager, compiled)


def family_rows():
    """Every reference class of the family: resume across save/load (weights_only) is bit-identical."""
    from .cases import family as fam

    rows = []
    for cls in fam.FAMILY:
        for compat in ("upstream", "fixed"):
            straight, resumed = fam.resume_runs(cls, compat)
            err = max(float((a - b).abs().max()) for a, b in zip(straight, resumed, strict=True))
            finite = all(bool(torch.isfinite(a).all()) for a in straight)
            name = f"{cls.__name__} {compat}: 5 steps + save/load + 7 == 12 steps" + ("" if finite else " (NaN!)")
            rows.append([name, "optimizers.md", err, err if finite else float("inf"), 0.0])
    return rows


def paper_rows():
    """Issue 3: each paper's own algorithm against its oracle, and the readable quantiser against bitsandbytes."""
    import bitsandbytes.functional as bnb_functional

    from reference import blockwise_8bit

    from .cases import paper_oracles as tp

    rows = []
    for name, ours, ours_kw, theirs, theirs_kw, keys in tp.ORACLES:
        err = tp.oracle_error(ours, ours_kw, theirs, theirs_kw, keys)
        rows.append([f"paper {name} vs {theirs.__module__.split('.')[0]}.{theirs.__name__}, {tp.STEPS} steps",
                     "papers/index.json", None, err, ORACLE_FP32.bound])  # fmt: skip
    kw = tp._adamw_kw()
    err = tp.oracle_error(tp.adamw.AdamW, kw, torch.optim.AdamW, {**kw, "foreach": False}, [], wrap=tp._orthograd_wrap)
    rows.append([f"paper OrthoGrad(AdamW) vs pytorch_optimizer.OrthoGrad, {tp.STEPS} steps", "papers/index.json",
                 None, err, ORACLE_FP32.bound])  # fmt: skip
    err = max(tp.allora_gradient_error(seed) for seed in range(5))
    rows.append(["paper ALLoRA: adapter gradients vs diag(s)·∂L/∂(BA) identity (float64)", "papers/index.json",
                 None, err, ALLORA_GRADIENT_FP64.bound])  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g) * torch.rand(100_000, generator=g).pow(4) * 10
    x[::1000] = 0
    for blocksize in (64, 128, 256, 512, 1024, 2048, 4096):
        codes, absmax = blockwise_8bit.quantize_readable(x, blocksize)
        theirs, state = bnb_functional.quantize_blockwise(x, blocksize=blocksize)
        mismatches = int((codes != theirs).sum()) + int((absmax != state.absmax).sum())
        rows.append([f"readable blockwise quantiser vs bitsandbytes, B={blocksize}: mismatching codes/absmax",
                     "Dettmers et al. 2022, Sec. 2", None, float(mismatches), 0.0])  # fmt: skip
    return rows


DIFFERENTIAL_DRAWS = int(os.environ.get("DIFFERENTIAL_DRAWS", "2000"))  # the thorough profile, over all classes


def differential_rows():
    """The thorough randomised differential profile (differential.profile): one row per class, its failing draws
    counted (tolerance 0); every failure is written with its draw to reports/differential_failures.txt."""
    per_class = -(-DIFFERENTIAL_DRAWS // len(differential.CLASSES))
    previous = optimized.compile_enabled()
    optimized.set_compile(False)  # see differential.profile
    try:
        counts, failures = differential.profile(per_class)
    finally:
        optimized.set_compile(previous)
    lines = [f"{line}\n    {d!r}" for d, line in failures]
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "differential_failures.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = []
    for name, count in counts.items():
        failed = len({id(d) for d, _ in failures if d.name == name})
        detail = ", ".join(f"{kind} {count[kind]}" for kind in differential.CHECKS)
        rows.append([f"differential {name}: {count['draws']} draws; failing draws by check: {detail}",
                     "equivalence_tests/differential.py", None, float(failed), 0.0])  # fmt: skip
    return rows


def upstream_rows():
    from tools import upstream_improved8_parity, upstream_improved_parity, upstream_parity, upstream_s2o_parity

    steps = int(os.environ.get("UPSTREAM_STEPS", "1000"))
    rows = []
    for env, tool, commit in (("UPSTREAM_AUTOMAGIC", upstream_parity, "863c5b5"),
                              ("UPSTREAM_IMPROVED", upstream_improved_parity, "803cb56"),
                              ("UPSTREAM_S2O", upstream_s2o_parity, "0b433bc"),
                              ("UPSTREAM_IMPROVED_8BIT", upstream_improved8_parity, "863c5b5")):  # fmt: skip
        path = os.environ.get(env)
        if path:
            rows += [
                [f"reference(compat=upstream) vs upstream {tag}, {steps} steps", f"hinablue/sd-scripts@{commit}",
                 None, err, 0.0]
                for tag, err in tool.rows(upstream_parity.load_upstream(path), steps)
            ]  # fmt: skip
    return rows


def fmt(x):
    return "—" if x is None else f"{x:.2e}"


def main() -> int:
    start = time.perf_counter()
    rows = technique_rows() + optimizer_rows() + eight_bit_rows() + hina_rows() + improved_rows() + seed004_rows()
    rows += improved8_rows()
    rows += family_rows() + paper_rows() + differential_rows() + upstream_rows()
    header = ["check", "paper / source", "max abs err", "max rel err", "tolerance", "result"]
    table = [header, ["---"] * len(header)]
    failures = 0
    for name, source, abs_err, rel_err, tol in rows:
        ok = rel_err <= tol
        failures += not ok
        table.append([name, source, fmt(abs_err), fmt(rel_err), fmt(tol), "pass" if ok else "FAIL"])
    lines = ["| " + " | ".join(r) + " |" for r in table]
    notes = [
        "",
        "Errors are max |optimized − reference| over each tensor, relative to the tensor's max |reference| "
        "(equivalence_tests/tolerances.py says why each tolerance is what it is).",
        "Lockstep: both step from identical state each step; free-running: no re-sync, within the fixed bound "
        "or, where the error is beyond it, within SELF_DIVERGENCE × the reference's own drift over the same run "
        "(its gradients perturbed by one rounding error; harness.free_running_limit), as the tests hold it. "
        "One-element "
        "parameters in upstream mode are left out while t < W/2 (upstream OrthoGrad is undefined there; "
        "see reference/orthograd.py).",
        f"torch {torch.__version__}, compiled fast path: {os.environ.get('CAMEAMP_COMPILE', '1') != '0'}, "
        f"{time.perf_counter() - start:.0f} s.",
    ]
    upstream_envs = ("UPSTREAM_AUTOMAGIC", "UPSTREAM_IMPROVED", "UPSTREAM_S2O", "UPSTREAM_IMPROVED_8BIT")
    if not any(os.environ.get(env) for env in upstream_envs):
        notes.append(f"Upstream parity rows not run: set {' / '.join(upstream_envs)} to the upstream files.")
    notes.append(
        "The family's other reference classes are compared with upstream by tools/upstream_parity.py "
        "(8bit, COptim), tools/upstream_improved_parity.py (Improved), tools/upstream_s2o_parity.py (seed 004 8-Bit), "
        "tools/upstream_improved8_parity.py (Improved_8Bit) "
        "and tools/upstream_hina_parity.py "
        "(HinaAdamW); COptim8bit has no upstream numerics "
        "(upstream raises at step 1). Every reference class has an optimized class, compared above."
    )
    report = "# Verification report\n\n" + "\n".join(lines + notes) + "\n"
    print(report)
    out = ROOT / "reports" / "verification.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
