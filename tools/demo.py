"""`make demo`: a real LoRA fine-tune with every optimizer of the family, on data that ships with scikit-learn.

A small MLP denoiser (64 → 128 → 128 → 64, ReLU) is pretrained with AdamW to denoise the digits 0–4 of
scikit-learn's 8×8 digits; then rank-8 LoRA adapters (kohya names `lora_down` / `lora_up`, B = 0 at the
start) on its three layers are fitted to denoise the digits 5–9, the base frozen. Each row trains the
same adapters from the same start on the same batches, in its own process (so its peak RSS is its own),
and the table reports the held-out denoising loss, the median optimizer step time, the optimizer state
size and the process's peak RSS. Loss curves go to reports/demo_loss.png and the table to reports/demo.md.

Usage: python -m tools.demo [--steps 300] [--rows SUBSTRING ...] [--compat fixed|upstream] [--jobs N]

Learning rates: the Adam-like classes use 1e-3 … 3e-3. Two classes step on the raw-gradient scale and
need an SGD-like lr (with max_lr above it): COptim's momentum follows raw-gradient EMAs (spec T17), and
Improved_8Bit's update is the raw momentum (O7). The table prints each row's lr.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import torch

from tools.bench import state_bytes

ROOT = Path(__file__).resolve().parents[1]
RANK = 8
NOISE = 0.5
BATCH = 128


class LoRALinear(torch.nn.Module):
    def __init__(self, inp: int, out: int, rank: int = RANK):
        super().__init__()
        self.base = torch.nn.Linear(inp, out)
        self.lora_down = torch.nn.Linear(inp, rank, bias=False)
        self.lora_up = torch.nn.Linear(rank, out, bias=False)
        torch.nn.init.zeros_(self.lora_up.weight)

    def forward(self, x):
        return self.base(x) + self.lora_up(self.lora_down(x))


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(LoRALinear(64, 128), torch.nn.ReLU(), LoRALinear(128, 128), torch.nn.ReLU(),
                               LoRALinear(128, 64))  # fmt: skip


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    return x[y < 5], x[y >= 5]


def batches(data, seed: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        clean = data[torch.randint(0, len(data), (BATCH,), generator=g)]
        yield (clean + NOISE * torch.randn(clean.shape, generator=g)).clamp(0, 1), clean


def held_out_loss(net, data) -> float:
    g = torch.Generator().manual_seed(99)
    noisy = (data + NOISE * torch.randn(data.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        return float(((net(noisy) - data) ** 2).mean())


def pretrain(steps: int = 600) -> dict:
    torch.manual_seed(0)
    base_data, _ = digits()
    net = make_model()
    opt = torch.optim.AdamW([p for n, p in net.named_parameters() if "lora" not in n], lr=3e-3)
    for noisy, clean in batches(base_data, 0, steps):
        loss = ((net(noisy) - clean) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.state_dict()


def _family(name, impl="reference", **extra):
    def build(named, lr, compat):
        import optimized
        import reference

        params = [p for _, p in named]
        cls = getattr(optimized if impl == "optimized" else reference, name)
        if name == "HinaAdamWOptimizer":  # finds the LoRA A/B pairs by name
            return cls(named, lr=lr, compat=compat)
        return cls(params, lr=lr, warmup_steps=100, compat=compat, **extra)

    return build


def _adamw(named, lr, compat):
    return torch.optim.AdamW([p for _, p in named], lr=lr)


def _bnb_adamw8bit(named, lr, compat):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit([p for _, p in named], lr=lr, min_8bit_size=0)  # LoRA tensors are < 4096


SGD_SCALE = {"max_lr": 30.0}
# (label, builder, lr, is a family row)
ROWS = [
    ("torch AdamW", _adamw, 3e-3, False),
    ("bitsandbytes AdamW8bit", _bnb_adamw8bit, 3e-3, False),
    ("Automagic_CameAMP", _family("Automagic_CameAMP"), 1e-3, True),
    ("optimized Automagic_CameAMP", _family("Automagic_CameAMP", "optimized"), 1e-3, True),
    ("Automagic_CameAMP8bit", _family("Automagic_CameAMP8bit"), 1e-3, True),
    ("optimized Automagic_CameAMP8bit", _family("Automagic_CameAMP8bit", "optimized"), 1e-3, True),
    ("Automagic_CameAMP_COptim", _family("Automagic_CameAMP_COptim", **SGD_SCALE), 3.0, True),
    ("Automagic_CameAMP_COptim8bit", _family("Automagic_CameAMP_COptim8bit", **SGD_SCALE), 3.0, True),
    ("optimized Automagic_CameAMP_COptim", _family("Automagic_CameAMP_COptim", "optimized", **SGD_SCALE), 3.0, True),
    (
        "optimized Automagic_CameAMP_COptim8bit",
        _family("Automagic_CameAMP_COptim8bit", "optimized", **SGD_SCALE),
        3.0,
        True,
    ),
    ("Automagic_CameAMP_Improved", _family("Automagic_CameAMP_Improved"), 1e-3, True),
    ("optimized Automagic_CameAMP_Improved", _family("Automagic_CameAMP_Improved", "optimized"), 1e-3, True),
    ("Automagic_CameAMP_Improved_8Bit", _family("Automagic_CameAMP_Improved_8Bit", force_8bit=True), 1.0, True),
    (
        "optimized Automagic_CameAMP_Improved_8Bit",
        _family("Automagic_CameAMP_Improved_8Bit", "optimized", force_8bit=True),
        1.0,
        True,
    ),
    ("Automagic_CameAMP_8Bit (seed 004)", _family("Automagic_CameAMP_8Bit"), 1e-3, True),
    ("optimized Automagic_CameAMP_8Bit (seed 004)", _family("Automagic_CameAMP_8Bit", "optimized"), 1e-3, True),
    ("HinaAdamWOptimizer", _family("HinaAdamWOptimizer"), 3e-3, True),
    ("optimized HinaAdamWOptimizer", _family("HinaAdamWOptimizer", "optimized"), 3e-3, True),
]


def train_row(index: int, base_state: dict, steps: int, compat: str, threads: int | None = None) -> dict:
    """One row, in a fresh process: LoRA adapters from the same start, trained on digits 5–9."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    label, build, lr, _ = ROWS[index]
    _, new_data = digits()
    net = make_model()
    net.load_state_dict(base_state)
    g = torch.Generator().manual_seed(1)
    for name, p in net.named_parameters():
        p.requires_grad_("lora" in name)
        if "lora_down" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    named = [(n, p) for n, p in net.named_parameters() if "lora" in n]
    opt = build(named, lr, compat)
    start = held_out_loss(net, new_data)
    losses, times, error = [], [0.0], None
    try:
        for noisy, clean in batches(new_data, 2, steps):
            loss = ((net(noisy) - clean) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            begin = time.perf_counter()
            opt.step(loss=float(loss.detach())) if "COptim" in type(opt).__name__ else opt.step()
            times.append(time.perf_counter() - begin)
            losses.append(float(loss.detach()))
    except ValueError as exc:  # the NaN/Inf policy (nonfinite="raise") stopped a diverging run
        error = f"step {len(losses) + 1}: {exc}"
    times.sort()
    final = float("nan") if error else held_out_loss(net, new_data)
    return {"label": label, "lr": lr, "start": start, "final": final, "losses": losses, "error": error,
            "step_ms": 1e3 * times[len(times) // 2], "first_step_s": max(times), "state_mb": state_bytes(opt) / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", nargs="*", default=[], help="only rows whose label contains one of these")
    parser.add_argument("--compat", choices=("fixed", "upstream"), default="fixed")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="rows trained at once, each in its own process with threads/jobs threads")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    threads = max(1, torch.get_num_threads() // args.jobs)
    chosen = [i for i, row in enumerate(ROWS) if i == 0 or not args.rows or any(s in row[0] for s in args.rows)]
    base_state = pretrain()
    # a fresh process per row (maxtasksperchild=1), so each row's peak RSS is its own. Most of an optimized
    # row's time is compiling, so those start first and the quick reference rows fill the other worker.
    context = multiprocessing.get_context("spawn")
    order = sorted(chosen, key=lambda i: not ROWS[i][0].startswith("optimized"))
    with context.Pool(args.jobs, maxtasksperchild=1) as pool:
        runs = {i: pool.apply_async(train_row, (i, base_state, args.steps, args.compat, threads)) for i in order}
        finished = {}
        for done, index in enumerate(order):
            progress(done, len(chosen), ROWS[index][0])
            finished[index] = runs[index].get()
    results = [finished[i] for i in chosen]
    progress(len(chosen), len(chosen), "done")
    sys.stderr.write("\n")
    return report(results, chosen, args)


def report(results, chosen, args) -> int:
    baseline = results[0]["final"]
    columns = ("optimizer", "lr", "held-out loss (start → end)", "ms/step (median)", "first step s", "state MB",
               "peak RSS MB", "trains")  # fmt: skip
    header = "| " + " | ".join(columns) + " |"
    lines = [f"# LoRA demo: {args.steps} steps, compat={args.compat}", "", header, "|" + " --- |" * len(columns)]
    failed = []
    for index, r in zip(chosen, results, strict=True):
        family = ROWS[index][3]
        ok = r["final"] < r["start"] and r["final"] < 2 * baseline
        if family and not ok:
            failed.append(r["label"])
        lines.append(f"| {r['label']} | {r['lr']:g} | {r['start']:.4f} → {r['final']:.4f} | {r['step_ms']:.2f} | "
                     f"{r['first_step_s']:.2f} | {r['state_mb']:.3f} | {r['peak_rss_mb']:.0f} | "
                     f"{'yes' if ok else 'NO'} |")  # fmt: skip
    lines += ["", f"'trains': the held-out loss fell and ends below 2× torch AdamW's ({baseline:.4f})."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "reports"
    out.mkdir(exist_ok=True)
    (out / "demo.md").write_text(text, encoding="utf-8")
    plot(results, out / "demo_loss.png")
    for r in results:
        if r["error"]:
            print(f"{r['label']} stopped at {r['error']}")
    if failed:
        print("rows that did not train:", ", ".join(failed))
    return 1 if failed else 0


def plot(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(9, 5))
    for r in results:
        if not r["losses"]:
            continue
        losses = torch.tensor(r["losses"])
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], min(10, len(losses)), 1).reshape(-1)
        plt.plot(smooth.numpy(), label=r["label"] + (" (stopped: NaN/Inf)" if r["error"] else ""))
    plt.yscale("log")
    plt.xlabel("step")
    plt.ylabel("training loss (10-step mean)")
    plt.title("LoRA adapters on digits 5–9")
    plt.legend(fontsize=7)
    plt.tight_layout()
    plt.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
