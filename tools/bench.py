"""`make bench`: step time and optimizer-state bytes/param, as ratios to torch's fused AdamW measured in the
same run (rounds alternate the baseline and the candidate; the ratio is the median over rounds).
Writes reports/bench.md.

Workloads: 4M and 16M parameters in one flat tensor, and a LoRA-like set of 1,400 small tensors
(16×768 and 768×16 factors, 17.2M parameters). Times are medians of per-round best-of-two steps.
The optimized class is timed per phase (t < W/2; W/2 ≤ t < W; t ≥ W, which is most of a run), and its
first step is timed in a fresh process with an empty inductor cache (compile included). "Step peak extra"
is the most memory allocated and not yet freed during one more step (the profiler's allocation events).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

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


def timed_step(opt) -> float:
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def interleaved(base, opt, rounds, warmup, steps_per_round=1):
    """Median step times of `base` and `opt`, and the median of their per-round ratios. Rounds alternate
    the two optimizers, so machine-load drift hits both alike."""
    for _ in range(warmup):
        opt.step()
    base_times, times, ratios = [], [], []
    for _ in range(rounds):
        tb = min(timed_step(base) for _ in range(steps_per_round))
        to = min(timed_step(opt) for _ in range(steps_per_round))
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

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def bench_workload(workload, repeats, include_slow):
    import bitsandbytes as bnb

    import optimized
    import reference

    base_params = make_params(workload)
    n = sum(p.numel() for p in base_params)
    base = torch.optim.AdamW(base_params, lr=1e-3, fused=True)
    for _ in range(3):
        base.step()
    rows = [("torch AdamW(fused=True)", statistics.median(timed_step(base) for _ in range(repeats)), 1.0,
             state_bytes(base) / n, step_peak_bytes(base) / n)]  # fmt: skip

    def add(name, opt_factory, warmup=2, rounds=repeats):
        opt = opt_factory(make_params(workload))
        _, t, ratio = interleaved(base, opt, rounds, warmup, steps_per_round=2)
        rows.append((name, t, ratio, state_bytes(opt) / n, step_peak_bytes(opt) / n))
        return opt

    add("bitsandbytes AdamW8bit (CPU)", lambda p: bnb.optim.AdamW8bit(p, lr=1e-3), rounds=max(2, repeats // 3))
    phases = [
        ("optimized, t < W/2 (TAM, OrthoGrad, decay)", dict(warmup_steps=10**6), 3),
        ("optimized, W/2 ≤ t < W (mask warm-up)", dict(warmup_steps=60), 32),
        ("optimized, t ≥ W (most of training)", dict(warmup_steps=4), 6),
    ]
    for name, kw, warmup in phases:
        opt = add(name, lambda p, kw=kw: optimized.Automagic_CameAMP(p, lr=1e-4, **kw), warmup=warmup)
    workspace = opt.workspace_bytes() / n
    for name, kw, warmup in phases:  # 8-bit states, the corrected mode
        add(name.replace("optimized", "optimized 8bit (fixed)"),
            lambda p, kw=kw: optimized.Automagic_CameAMP8bit(p, lr=1e-4, compat="fixed", **kw),
            warmup=warmup)  # fmt: skip
    for name, cls in (
        ("optimized COptim", optimized.Automagic_CameAMP_COptim),
        ("optimized COptim8bit (fixed)", optimized.Automagic_CameAMP_COptim8bit),
    ):
        add(f"{name}, t ≥ W", lambda p, cls=cls: cls(p, lr=1e-4, warmup_steps=4, compat="fixed"), warmup=6)
    # HinaAdamW (O9) at its defaults: AGR, ADOPT-style stale denominator, TAM, Grams, Cautious, SPD
    add("optimized HinaAdamW", lambda p: optimized.HinaAdamWOptimizer(p, lr=1e-3), warmup=3)
    add("optimized HinaAdamW, optim_bits=8",
        lambda p: optimized.HinaAdamWOptimizer(p, lr=1e-3, optim_bits=8, min_8bit_size=4096), warmup=3)  # fmt: skip
    if include_slow:
        add("reference HinaAdamW", lambda p: reference.HinaAdamWOptimizer(p, lr=1e-3), warmup=2,
            rounds=max(2, repeats // 3))  # fmt: skip
        add("reference, t ≥ W", lambda p: reference.Automagic_CameAMP(p, lr=1e-4, warmup_steps=4), warmup=6,
            rounds=max(2, repeats // 3))  # fmt: skip
        add("reference 8bit (fixed), t ≥ W",
            lambda p: reference.Automagic_CameAMP8bit(p, lr=1e-4, warmup_steps=4, compat="fixed"), warmup=6,
            rounds=max(2, repeats // 3))  # fmt: skip
    return n, rows, workspace


TABLE_HEADER = "| optimizer | step (ms) | × fused AdamW | state bytes/param | step peak extra bytes/param |"
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


def first_step(workload):
    """Seconds for step 1 and for steps 1–6 (seed, then the early-phase graphs), cold inductor cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", FIRST_STEP.format(root=str(ROOT), workload=workload)],
                             capture_output=True, text=True, env=env, check=True)  # fmt: skip
    first, six = map(float, out.stdout.split()[-2:])
    return first, six


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9, help="rounds per row")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference rows")
    args = parser.parse_args()
    lines = [f"# Benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads, CPU)", ""]
    for workload in args.workloads:
        n, rows, workspace = bench_workload(workload, args.repeats, not args.no_reference)
        first, six = first_step(workload)
        lines += [f"## {workload}: {n / 1e6:.1f}M parameters", "", TABLE_HEADER, "| --- | --- | --- | --- | --- |"]
        for name, t, ratio, bpp, peak in rows:
            lines.append(f"| {name} | {t * 1e3:.1f} | {ratio:.2f} | {bpp:.1f} | {peak:.2f} |")
        lines += ["", f"optimized workspace (gradient buffer that p.grad points into, early-phase scratch freed at "
                      f"W/2): {workspace:.1f} bytes/param after warm-up",
                  f"optimized first step, compile included, cold cache: {first:.1f} s; steps 1–6 (seed and "
                  f"early-phase graphs): {six:.1f} s", ""]  # fmt: skip
        print("\n".join(lines[-(len(rows) + 6) :]), flush=True)
    out = ROOT / "reports" / "bench.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
