"""`make bench`: step time and optimizer-state bytes/param, as ratios to torch's fused AdamW measured in the
same run (rounds alternate the baseline and the candidate; the ratio is the median over rounds), beside
bitsandbytes AdamW8bit, torchao's AdamW8bit (compiled, CPU) and pytorch-optimizer's CAME. Writes
reports/bench.md; prints a line per row as it goes. `--reference` adds the (slow) reference classes.

Workloads: 16M parameters in one flat tensor and a LoRA-like set of 1,400 small tensors (16×768 and 768×16
factors, 17.2M parameters); `--workloads "flat 4M"` adds a smaller flat one. Times are medians of per-round
best-of-two steps. Every warm-up class is timed in each phase (t < W/2: TAM, OrthoGrad, adaptive decay;
W/2 ≤ t < W: the mask warm-up; t ≥ W, most of a long run), with W chosen so that every timed step stays in its
phase, and the phases are weighted into a whole-run figure: a 1,000-step run at the default W = 500 spends 250
steps in each warm-up phase and 500 after. The optimized Automagic_CameAMP's first step is timed in a fresh
process with an empty inductor cache (compile included), beside inductor's own start there (a one-operation
graph). "Step peak extra" is the most memory allocated and not yet freed during one more step (the profiler's
allocation events).

"GB/s" is the least traffic a step must move (parameters read and written, the gradient read, every
state byte read and written) over its time, beside a bandwidth line measured in the same run (the best
of a few `c = a + s·b` passes over 768 MB, which moves 12 bytes per element). Writes reports/bench.png.
"Traffic floor" is that least traffic over fused AdamW's (28 bytes/param): the × fused AdamW a step would
take if it moved only that traffic at AdamW's GB/s. A goal below it cannot be met by any step that keeps
these states; extra passes for dependent reductions only raise it: for Automagic_CameAMP the report also gives
the floor over the passes its reductions force (docs/pass-floor.md).

The memory section (tools/bench_frozen.py) compares state, workspace and saved-adapter bytes of the flat-buffer
classes with the reference's on a frozen base beside a LoRA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from tools import bench_frozen

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "flat 4M": lambda: [torch.randn(4 * 2**20)],
    "flat 16M": lambda: [torch.randn(16 * 2**20)],
    "LoRA-like 1,400 tensors": lambda: [torch.randn(s) * 0.02 for _ in range(700) for s in ((16, 768), (768, 16))],
}


def make_params(workload):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(t) for t in WORKLOADS[workload]()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(base, opt, rounds, warmup, steps_per_round=1):
    """Median step times of `base` and `opt`, and the median of their per-round ratios. Rounds alternate
    the two optimizers, so machine-load drift hits both alike."""
    for _ in range(warmup):
        opt.step()
    base_times, times, ratios = [], [], []
    for _ in range(rounds):
        tb = min(timed(base.step) for _ in range(steps_per_round))
        to = min(timed(opt.step) for _ in range(steps_per_round))
        base_times.append(tb)
        times.append(to)
        ratios.append(to / tb)
    return statistics.median(base_times), statistics.median(times), statistics.median(ratios)


def state_bytes(opt) -> int:
    if hasattr(opt, "state_bytes"):
        return opt.state_bytes()
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
            elif hasattr(v, "numel"):  # bitsandbytes QuantState and the like
                total += v.numel() * v.element_size()
    return total


def step_peak_bytes(opt) -> int:
    """Peak bytes allocated and not yet freed during one step (temporaries; a step that allocates state
    counts it too), from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def bandwidth_line(n=64 * 2**20, repeats=5) -> float:
    """GB/s of the best `torch.add(a, b, alpha=s, out=c)` (a STREAM-triad-like pass, 12 bytes/element)."""
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    best = min(timed(lambda: torch.add(a, b, alpha=0.5, out=c)) for _ in range(repeats))
    return 12 * n / best / 1e9


def least_traffic(params, state_total: int) -> int:
    """Bytes a step must move at least: θ read and written, g read, the states read and written."""
    return sum(p.numel() * p.element_size() * 3 for p in params) + 2 * state_total


# the family's flat-buffer and stack classes, timed in each phase: (row label, class name, kwargs, slow: a step
# of ≥ 100 ms, timed in fewer rounds)
FAMILY = (
    ("Automagic_CameAMP", "Automagic_CameAMP", {}, False),
    ("Automagic_CameAMP8bit", "Automagic_CameAMP8bit", {}, True),
    ("COptim", "Automagic_CameAMP_COptim", {}, False),
    ("COptim8bit", "Automagic_CameAMP_COptim8bit", {}, True),
    ("Improved", "Automagic_CameAMP_Improved", {}, True),
    ("8Bit (seed 004)", "Automagic_CameAMP_8Bit", {}, True),
    ("Improved_8Bit", "Automagic_CameAMP_Improved_8Bit", {"force_8bit": True}, True),
)
EIGHT_BIT = ("Automagic_CameAMP8bit", "COptim8bit", "8Bit (seed 004)", "Improved_8Bit", "HinaAdamW, optim_bits=8")
PHASES = ("t < W/2", "W/2 ≤ t < W", "t ≥ W")
# a 1,000-step run at the default W = 500 spends 250 steps in t < W/2, 250 in W/2 ≤ t < W and 500 after
RUN_WEIGHTS = dict(zip(PHASES, (0.25, 0.25, 0.5), strict=True))


def phase_setup(phase: str, rounds: int) -> tuple[dict, int]:
    """(warmup_steps, steps taken before timing) that keep every timed step (2 per round, and the peak-memory
    step) inside `phase`."""
    timed_steps = 2 * rounds + 1
    if phase == "t < W/2":
        return {"warmup_steps": 10**6}, 3
    if phase == "W/2 ≤ t < W":  # steps timed_steps + 1 … 2·timed_steps, all in [W/2, W)
        return {"warmup_steps": 2 * (timed_steps + 1)}, timed_steps
    return {"warmup_steps": 4}, 6


@contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null: the profiler's C++ logger writes a line at every start and stop, and
    bitsandbytes and torchao one for each optional kernel they cannot load."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def bench_workload(workload, repeats, include_reference, only=()):
    """Rows (name, step s, × fused AdamW, state bytes/param, step peak extra bytes/param, GB/s),
    {class label: {phase: × fused AdamW}} and the floors measured beside them, × fused AdamW (None where they do
    not apply): {"draw": the random walk's draw (`noise_draw`), "svd": the rank penalty's SVDs (`rank_svds`)}."""
    from pytorch_optimizer import CAME

    with quiet_stderr():
        import bitsandbytes as bnb
        from torchao.optim import AdamW8bit as AdamW8bitAO

    import optimized
    import reference

    base_params = make_params(workload)
    n = sum(p.numel() for p in base_params)
    base = torch.optim.AdamW(base_params, lr=1e-3, fused=True)
    for _ in range(3):
        base.step()
    base_time = statistics.median(timed(base.step) for _ in range(repeats))
    rows = [("torch AdamW(fused=True)", base_time, 1.0, state_bytes(base) / n, step_peak_bytes(base) / n,
             least_traffic(base_params, state_bytes(base)) / base_time / 1e9)]  # fmt: skip
    phases: dict = {}
    started = time.perf_counter()

    def add(name, opt_factory, warmup=2, rounds=repeats):
        if only and not any(part in name for part in only):
            return None
        params = make_params(workload)
        opt = opt_factory(params)
        _, t, ratio = interleaved(base, opt, rounds, warmup, steps_per_round=2)
        total = state_bytes(opt)
        rows.append((name, t, ratio, total / n, step_peak_bytes(opt) / n, least_traffic(params, total) / t / 1e9))
        print(f"  [{workload}, {time.perf_counter() - started:.0f} s] {name}: {t * 1e3:.1f} ms, {ratio:.2f}×",
              flush=True)  # fmt: skip
        return opt

    add("bitsandbytes AdamW8bit (CPU)", lambda p: bnb.optim.AdamW8bit(p, lr=1e-3), rounds=max(2, repeats // 3))
    add("torchao AdamW8bit (CPU, compiled)", lambda p: AdamW8bitAO(p, lr=1e-3), warmup=3, rounds=max(2, repeats // 3))
    add("pytorch-optimizer CAME", lambda p: CAME(p, lr=1e-3), rounds=max(2, repeats // 3))
    workspace = float("nan")
    for label, cls, kwargs, slow in FAMILY:
        rounds = max(2, repeats // 3) if slow else repeats
        for phase in PHASES:
            kw, warmup = phase_setup(phase, rounds)
            opt = add(f"optimized {label}, {phase}",
                      lambda p, cls=cls, kw={**kwargs, **kw}: getattr(optimized, cls)(p, lr=1e-4, **kw),
                      warmup=warmup, rounds=rounds)  # fmt: skip
            if opt is not None:
                phases.setdefault(label, {})[phase] = rows[-1][2]
                if cls == "Automagic_CameAMP" and phase == "t ≥ W":
                    workspace = opt.workspace_bytes() / n
    # HinaAdamW (O9) has no warm-up phases; at its defaults: AGR, ADOPT-style stale denominator, TAM, Grams,
    # Cautious, SPD
    for label, kw in (("HinaAdamW", {}), ("HinaAdamW, optim_bits=8", {"optim_bits": 8, "min_8bit_size": 4096})):
        if add(f"optimized {label}", lambda p, kw=kw: optimized.HinaAdamWOptimizer(p, lr=1e-3, **kw), warmup=3):
            phases[label] = dict.fromkeys(PHASES, rows[-1][2])
    if include_reference:
        slow = max(2, repeats // 3)
        for label, cls, kwargs, _ in FAMILY:
            add(f"reference {label}, t ≥ W",
                lambda p, cls=cls, kwargs=kwargs: getattr(reference, cls)(p, lr=1e-4, warmup_steps=4, **kwargs),
                warmup=6, rounds=slow)  # fmt: skip
        add("reference HinaAdamW", lambda p: reference.HinaAdamWOptimizer(p, lr=1e-3), warmup=2, rounds=slow)
    floors = {"draw": noise_draw(n, repeats) / base_time if "Improved_8Bit" in phases else None, "svd": None}
    if any(label in phases for label in RANK_PENALTY_CLASSES) and (svd := rank_svds(base_params, repeats)):
        floors["svd"] = svd / base_time
    return n, rows, workspace, phases, floors


def noise_draw(n: int, repeats: int) -> float:
    """Seconds to draw n N(0, 1) fp32 values from a CPU generator: Improved_8Bit's random walk at t ≥ W draws one
    per mask element from the optimizer's own generator, as the reference does, and the stream must be the
    reference's, so no faster draw exists for it (torch's CPU generator is sequential)."""
    gen = torch.Generator().manual_seed(0)
    return statistics.median(timed(lambda: torch.randn(n, generator=gen)) for _ in range(repeats))


# the stack classes that, at their defaults, add T24's rank penalty to every 2-D tensor's gradient at every step
RANK_PENALTY_CLASSES = ("Improved", "8Bit (seed 004)", "Improved_8Bit")


def rank_svds(params, repeats: int) -> float | None:
    """Seconds for the SVDs T24's rank penalty takes in one step (None without 2-D tensors), batched as the stack
    classes batch them: the 2-D tensors of each shape in stacks of at most STACK_ELEMENTS elements, each tall, as
    low_rank_penalty.tail_nuclear_gradient takes it. The reference defines the penalty by this SVD of θ, which
    changes every step (docs/pass-floor.md)."""
    from optimized.shape_stack import STACK_ELEMENTS

    by_shape: dict = {}
    for p in params:
        if p.dim() == 2:
            by_shape.setdefault(tuple(p.shape), []).append(p.detach() if p.shape[0] >= p.shape[1] else p.detach().mT)
    stacks = []
    for matrices in by_shape.values():
        size = max(1, STACK_ELEMENTS // matrices[0].numel())
        stacks += [torch.stack(matrices[i : i + size]) for i in range(0, len(matrices), size)]
    if not stacks:
        return None

    def svds():
        for stack in stacks:
            torch.linalg.svd(stack, full_matrices=False)

    svds()
    return statistics.median(timed(svds) for _ in range(repeats))


# Issue 27's goals, × fused AdamW (or bitsandbytes AdamW8bit ÷ the row, for the 8-bit classes)
GOALS = (
    ("Automagic_CameAMP", "t < W/2", 4.0),
    ("Automagic_CameAMP", "t ≥ W", 2.0),
    ("Automagic_CameAMP", "whole run", 2.5),
    ("HinaAdamW", "whole run", 2.5),
    ("Improved", "t < W/2", 8.0),
    ("Improved", "t ≥ W", 4.0),
)
BNB_GOAL = 3.0  # every 8-bit class at least this much faster than bitsandbytes AdamW8bit, in every phase
# Automagic_CameAMP's least bytes/param per phase over the passes its reductions force (docs/pass-floor.md),
# over fused AdamW's 28
PASS_FLOOR = {"t < W/2": 86, "W/2 ≤ t < W": 58, "t ≥ W": 52}
ADAMW_BYTES = 28


def whole_run(phases: dict) -> dict:
    """× fused AdamW over a 1,000-step run at the default W = 500 (phases weighted by their lengths)."""
    return {label: sum(RUN_WEIGHTS[ph] * r for ph, r in by_phase.items()) for label, by_phase in phases.items()
            if set(by_phase) == set(PHASES)}  # fmt: skip


def phase_table(rows, phases: dict, flat: bool, floors: dict | None = None) -> list[str]:
    """Per class: each phase and the whole run as × fused AdamW, and bitsandbytes AdamW8bit's time over the
    row's for the 8-bit classes; then the goals met or missed, on a flat workload Automagic_CameAMP's pass
    floor, and the floors of `floors` (see `bench_workload`): Improved_8Bit's random walk, the rank penalty's
    SVDs."""
    floors = floors or {}
    draw, svd = floors.get("draw"), floors.get("svd")
    bnb = next((ratio for name, _, ratio, *_ in rows if name.startswith("bitsandbytes")), None)
    whole = whole_run(phases)
    out = ["| class | " + " | ".join(PHASES) + " | whole 1,000-step run (W = 500) | bitsandbytes ÷ this, worst phase |",
           "| --- " * (len(PHASES) + 3) + "|"]  # fmt: skip
    for label, by_phase in phases.items():
        cells = [f"{by_phase[ph]:.2f}" if ph in by_phase else "" for ph in PHASES]
        worst = f"{bnb / max(by_phase.values()):.2f}" if bnb and label in EIGHT_BIT else ""
        out.append(f"| {label} | " + " | ".join(cells) + f" | {whole.get(label, float('nan')):.2f} | {worst} |")
    out += ["", "Goals (issue 27):", ""]
    for label, phase, goal in GOALS:
        value = whole.get(label) if phase == "whole run" else phases.get(label, {}).get(phase)
        if value is not None:
            out.append(f"- {label}, {phase}: {value:.2f}× (goal ≤ {goal}): {'met' if value <= goal else 'missed'}")
    if flat and set(phases.get("Automagic_CameAMP", ())) == set(PHASES):
        out += ["", "Pass floor of Automagic_CameAMP (docs/pass-floor.md; × fused AdamW at its bandwidth):", ""]
        floors = {ph: PASS_FLOOR[ph] / ADAMW_BYTES for ph in PHASES}
        for phase, floor in floors.items():
            value = phases["Automagic_CameAMP"][phase]
            out.append(f"- {phase}: floor {floor:.2f}×, measured {value:.2f}× ({value / floor:.2f} of the floor)")
        floor = whole_run({"floor": floors})["floor"]
        out.append(f"- whole run: floor {floor:.2f}×, measured {whole['Automagic_CameAMP']:.2f}×")
    for label in EIGHT_BIT:
        if bnb and label in phases:
            worst = bnb / max(phases[label].values())
            out.append(f"- {label}: bitsandbytes AdamW8bit ÷ this, worst phase {worst:.2f} (goal ≥ {BNB_GOAL}): "
                       f"{'met' if worst >= BNB_GOAL else 'missed'}")  # fmt: skip
    if bnb and draw is not None and "t ≥ W" in phases.get("Improved_8Bit", {}):
        out.append(f"- Improved_8Bit, t ≥ W: its random walk's N(0, 1) draw alone (the reference's stream, "
                   f"docs/pass-floor.md) is {draw:.2f}×, so bitsandbytes ÷ this ≤ {bnb / draw:.2f}; the row is "
                   f"{phases['Improved_8Bit']['t ≥ W'] / draw:.2f}× the draw")  # fmt: skip
    if svd is not None:
        out += [
            "",
            f"Rank-penalty floor (T24's SVDs of every 2-D tensor, every step; docs/pass-floor.md): {svd:.2f}×",
            "",
        ]
        for label in RANK_PENALTY_CLASSES:
            if label in phases:
                low, high = min(phases[label].values()), max(phases[label].values())
                out.append(f"- {label}: its phases are {low / svd:.2f}–{high / svd:.2f}× the SVDs")
        for label, phase, goal in GOALS:
            if label in RANK_PENALTY_CLASSES and phase in phases.get(label, {}) and goal < svd:
                out.append(f"- {label}, {phase}: the goal (≤ {goal}×) is below the floor here")
    return out


TABLE_HEADER = (
    "| optimizer | step (ms) | × fused AdamW | state bytes/param | step peak extra bytes/param | GB/s "
    "| traffic floor (× fused AdamW) |"
)
FIRST_STEP = """
import time, torch, sys
sys.path.insert(0, {root!r})
import optimized
from tools.bench import make_params
params = make_params({workload!r})
opt = optimized.Automagic_CameAMP(params, lr=1e-4, warmup_steps=10)
times = []
for t in range(1, 7):
    start = time.perf_counter(); opt.step(); times.append(time.perf_counter() - start)
print(times[0], sum(times))
"""
# inductor's own start in an empty cache, our graphs aside: its CPU ISA probes (a C++ build per ISA) and a
# one-operation graph
TRIVIAL_COMPILE = """
import time, torch
start = time.perf_counter(); torch.compile(lambda x: x * 2 + 1, fullgraph=True)(torch.ones(8))
print(time.perf_counter() - start)
"""


def _fresh_cache_run(script: str) -> list[float]:
    """The numbers `script` prints last, run in a fresh process with an empty inductor cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return [float(x) for x in out.stdout.split()]


def first_step(workload):
    """Seconds for step 1 and for steps 1–6 (seed, then the early-phase graphs), cold inductor cache."""
    first, six = _fresh_cache_run(FIRST_STEP.format(root=str(ROOT), workload=workload))[-2:]
    return first, six


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9, help="rounds per row")
    parser.add_argument("--workloads", nargs="*", default=["flat 16M", "LoRA-like 1,400 tensors"],
                        help=f"of {list(WORKLOADS)}")  # fmt: skip
    parser.add_argument("--reference", action="store_true", help="also time the reference classes (slow)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="run only the rows whose names contain one of these ('memory': the frozen-base section)",
    )
    args = parser.parse_args()
    # the family's one-time notes (C-Optim without a loss, the warm-up clamp) and torch.compile's deprecations
    warnings.simplefilter("ignore")
    line = bandwidth_line()
    lines = [f"# Benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads, CPU)", "",
             f"Bandwidth line (triad c = a + s·b, 768 MB): {line:.1f} GB/s", ""]  # fmt: skip
    results = {}
    inductor_start = _fresh_cache_run(TRIVIAL_COMPILE)[-1]  # the same for every workload: measured once
    for workload in args.workloads:
        print(f"{workload}:", flush=True)
        block = len(lines)
        n, rows, workspace, phases, floors = bench_workload(workload, args.repeats, args.reference, tuple(args.only))
        results[workload] = rows
        first, six = first_step(workload)
        lines += [f"## {workload}: {n / 1e6:.1f}M parameters", "", TABLE_HEADER, "| --- " * 7 + "|"]
        base_bytes = rows[0][1] * rows[0][5]  # fused AdamW's least traffic (GB)
        for name, t, ratio, bpp, peak, gbs in rows:
            floor = t * gbs / base_bytes
            lines.append(f"| {name} | {t * 1e3:.1f} | {ratio:.2f} | {bpp:.1f} | {peak:.2f} | {gbs:.1f} | {floor:.2f} |")
        lines += ["", *phase_table(rows, phases, workload.startswith("flat"), floors), ""]
        lines += [f"optimized workspace (gradient buffer that p.grad points into, early-phase scratch freed at "
                      f"W/2): {workspace:.1f} bytes/param after warm-up",
                  f"optimized first step, compile included, cold cache: {first:.1f} s; steps 1–6 (seed and "
                  f"early-phase graphs): {six:.1f} s; inductor's own start alone (a one-operation graph, "
                  f"empty cache): {inductor_start:.1f} s", ""]  # fmt: skip
        print("\n".join(lines[block:]), flush=True)
    if not args.only or "memory" in args.only:
        lines += bench_frozen.section()
    out = ROOT / "reports" / "bench.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if results:  # (none with `--workloads` given no workload: the memory section alone)
        plot(results, line, out.with_suffix(".png"))
    print(f"written to {out}" + (f" and {out.with_suffix('.png')}" if results else ""))


def plot(results: dict, line: float, path: Path) -> None:
    """Per workload: step time as × fused AdamW (log scale) and effective GB/s beside the bandwidth line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.32 * max(len(r) for r in results.values()) * len(results) + 1.5
    fig, axes = plt.subplots(len(results), 2, figsize=(13, height), squeeze=False)
    for (workload, rows), (left, right) in zip(results.items(), axes, strict=True):
        names = [r[0] for r in rows][::-1]
        left.barh(names, [r[2] for r in rows][::-1], color="tab:blue")
        left.set_xscale("log")
        left.axvline(1.0, color="k", lw=0.8)
        left.set_title(f"{workload}: step time, × fused AdamW")
        right.barh(names, [r[5] for r in rows][::-1], color="tab:green")
        right.axvline(line, color="tab:red", ls="--", label=f"bandwidth line {line:.0f} GB/s")
        right.set_yticks([])
        right.set_title("least traffic / step time (GB/s)")
        right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
