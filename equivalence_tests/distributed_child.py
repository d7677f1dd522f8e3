"""One rank of the distributed equivalence tests (test_distributed.py), started by torchrun with gloo on the CPU.

For every class of both packages, both modes and each setting, it trains a small MLP under
DistributedDataParallel and under FSDP2 (`fully_shard`: DTensor parameters sharded on dim 0, unevenly where a
size is odd) and, beside it in the same process, the single-process run on the same global batch:
one model, every rank's micro-batches, the gradient DDP defines (each rank's accumulated gradient over its
micro-batches, averaged over the ranks). Halving is exact in floating point and a sum of two values does not
depend on their order, so the runs must agree bit for bit. Writes {case: [worst |Δθ| against the single
process, worst |Δθ| against rank 0]} to DIR/rank{r}.pt.

A class that steps its own shards under FSDP2 (`steps_local_shards`) sums each statistic per rank and then
across the ranks, an order of summation one process does not take, so its FSDP2 cases give instead
[scaled error against the single process, worst |Δθ| against rank 0, the bound it is held to] (`limit_of`), and
its DCP resumes are compared with the FSDP2 run that was not interrupted.
Usage: torchrun --nproc_per_node 2 -m equivalence_tests.distributed_child DIR"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn.parallel import DistributedDataParallel

import optimized
import reference
from optimized.compile import compile_enabled, set_compile
from reference.blockwise_8bit import BLOCKSIZE
from reference.sharding import block_scale_span, chunk_sizes, own_rows

from .cases.contract import WARMED
from .differential import CLASSES, COMPATS
from .harness import RoundingPerturbed, free_running_limit
from .tolerances import FREE_RUNNING_FP32, scaled_error

STEPS = 8  # 2·W with the warm-up window W = 4 of cases.contract.WARMED; with EARLY_WARMUP, t = 8 is its t ≥ W
STOP = 3  # the FSDP2 checkpoint is taken in warm-up
BATCH = 4  # per rank and micro-batch
# DDP: (gradient_as_bucket_view, micro-batches per step: the first ones under no_sync)
DDP_SETTINGS = ((False, 1), (True, 1), (True, 2))
FSDP_MICRO = (1, 2)  # micro-batches per step, the first ones without gradient sync
# A warm-up window whose early phase (t < W/2) has steps after CAME's seeding step t = 1, within STEPS
EARLY_WARMUP = 8
# Settings run as classes of their own: HinaAdamW with 8-bit states (every tensor: min_8bit_size=0)
VARIANTS = {"HinaAdamWOptimizer8bit": ("HinaAdamWOptimizer", {"optim_bits": 8, "min_8bit_size": 0})}
RUN = (*CLASSES, *VARIANTS)
BY_NAME = ("HinaAdamWOptimizer", "HinaAdamWOptimizer8bit")
LORA_PAIR = ("lora_down.weight", "lora_up.weight")  # LoraNet's (kohya's names): HinaAdamW steps the pair whole
KEEPS_AVG_LR = tuple(n for n in CLASSES if n not in ("HinaAdamWOptimizer", "Automagic_CameAMP_Improved_8Bit"))
CONTEXTUAL = (
    "Automagic_CameAMP_COptim",
    "Automagic_CameAMP_COptim8bit",
)  # C-Optim: step(loss=...) feeds Λ  # given named parameters: its LoRA pairs and factors come from the names
# The flat 8-bit classes step a tensor's shards only where its 4096-element blocks each lie within one rank's rows:
# their models get the wide branch (`Blocks`)
BLOCKED = ("Automagic_CameAMP8bit", "Automagic_CameAMP_COptim8bit", "HinaAdamWOptimizer8bit")
BLOCKS_FIT = ("wide.weight",)  # its ALLoRA ρ: one block of 1024·world rows, shared; the bias's block straddles
RANKS = [2]  # the world size the models are built for (Blocks), set by `main`


class Blocks(torch.nn.Module):
    """The wide branch a model adds for the 8-bit classes (`BLOCKED`): a [1024·world, 4] weight, whose 4096-element
    blocks fall one to each rank, and a [1024·world] bias, whose one block straddles them (`world`: the ranks the
    run shards over, `RANKS`)."""

    def __init__(self, wide: bool):
        super().__init__()
        self.wide = torch.nn.Linear(4, 1024 * RANKS[0]) if wide else None

    def branch(self, x):
        return 0.0 if self.wide is None else self.wide(x[:, :4]).tanh().mean(-1, keepdim=True)


class LoraNet(Blocks):
    """A layer with a LoRA pair beside it (kohya's names), an odd-sized head (an uneven FSDP2 shard) and a
    one-element gain (no rows on rank 1: an empty shard). `gain=False` leaves the gain out: in upstream mode's early
    phase a one-element tensor's OrthoGrad turns rounding into a full step (U ∥ θ), so one rounding of the inputs
    moves it by ~0.2 and a bound from that would say nothing about the other tensors."""

    def __init__(self, gain: bool = True, wide: bool = False):
        super().__init__(wide)
        self.base = torch.nn.Linear(6, 8)
        self.lora_down = torch.nn.Linear(6, 2, bias=False)
        self.lora_up = torch.nn.Linear(2, 8, bias=False)
        self.head = torch.nn.Linear(8, 3)
        self.gain = torch.nn.Parameter(torch.full((1,), 1.5)) if gain else None

    def forward(self, x):
        out = self.head(torch.tanh(self.base(x) + self.lora_up(self.lora_down(x)))) + self.branch(x)
        return out if self.gain is None else out * self.gain


class WideNet(Blocks):
    """More tensors than LoraNet (19 against 7), for counting the collectives of a step."""

    def __init__(self, wide: bool = False):
        super().__init__(wide)
        layers = (torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh()) for _ in range(8))
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(6, 3)
        self.gain = torch.nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x):
        return (self.head(self.body(x)) + self.branch(x)) * self.gain


MODELS = (LoraNet, WideNet)
NO_GAIN = functools.partial(LoraNet, gain=False)


def make_model(name: str, kind=LoraNet) -> torch.nn.Module:
    """The model class `name`'s runs train (with the wide branch for the 8-bit classes: `BLOCKED`)."""
    torch.manual_seed(0)
    return kind(wide=name in BLOCKED)


def batch(step: int, rank: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return torch.randn(BATCH, 6, generator=gen), torch.randn(BATCH, 3, generator=gen)


def loss_of(model, data) -> torch.Tensor:
    x, y = data
    return (model(x) - y).pow(2).mean()


def make_optimizer(package, name, model, compat, warmup=None):
    """`warmup`: the warm-up window W; for HinaAdamW, which has none, OrthoGrad on (off by default) instead: the
    case that adds the statistics a default step does not take."""
    params = model.named_parameters() if name in BY_NAME else model.parameters()
    base, extra = VARIANTS.get(name, (name, {}))
    settings = WARMED[base] if warmup is None or not WARMED[base] else {"warmup_steps": warmup}
    settings = {"use_orthogonal_grad": True} if warmup is not None and not WARMED[base] else settings
    return getattr(package, base)(params, lr=1e-2, compat=compat, **settings, **extra)


def train_ddp(package, name, compat, bucket_view: bool, micro: int, rank: int, with_loss=False) -> list[torch.Tensor]:
    """`with_loss`: each step is given the rank's loss (`step(loss=...)`, C-Optim's context)."""
    model = DistributedDataParallel(make_model(name), gradient_as_bucket_view=bucket_view)
    opt = make_optimizer(package, name, model, compat)
    for step in range(STEPS):
        opt.zero_grad()
        for m in range(micro - 1):
            with model.no_sync():
                loss_of(model, batch(step, rank, m)).backward()
        loss = loss_of(model, batch(step, rank, micro - 1))
        loss.backward()
        opt.step(loss=loss.item()) if with_loss else opt.step()
    return [p.detach().clone() for p in model.parameters()]


def fsdp_pair(package, name, compat, mesh, kind=LoraNet, warmup=None):
    model = make_model(name, kind)
    fully_shard(model, mesh=mesh)
    return model, make_optimizer(package, name, model, compat, warmup)


def fsdp_steps(model, opt, steps: range, micro: int, rank: int, count: bool = False, with_loss=False) -> list[int]:
    """The steps; with `count`, returns the collectives each optimizer step made (forward and backward not counted),
    stepping eagerly: torch.compile does not run under CommDebugMode's dispatch mode (the collectives are the same)."""
    counts = []
    compiling = compile_enabled()
    set_compile(compiling and not count)
    try:
        for step in steps:
            opt.zero_grad()
            for m in range(micro):
                model.set_requires_gradient_sync(m == micro - 1)
                loss = loss_of(model, batch(step, rank, m))
                loss.backward()
            with CommDebugMode() if count else contextlib.nullcontext() as comms:
                opt.step(loss=loss.item()) if with_loss else opt.step()
            counts.append(comms.get_total_counts() if count else 0)
    finally:
        set_compile(compiling)
    return counts


def collectives_per_step(package, name, rank: int, mesh) -> list[int]:
    """The most collectives one optimizer step made, over the phases (t < W/2, W/2 ≤ t < W, t ≥ W, with W =
    EARLY_WARMUP), on LoraNet (7 tensors) and on WideNet (19)."""
    pair = functools.partial(fsdp_pair, package, name, "fixed", mesh, warmup=EARLY_WARMUP)
    return [max(fsdp_steps(*pair(kind), range(STEPS), 1, rank, count=True)) for kind in MODELS]


def state_layout(package, name, rank: int, mesh) -> dict[str, str]:
    """How an FSDP2 optimizer holds each parameter's states after a step, by parameter name: "shards" where its
    parameter-shaped states are this rank's rows in `optimizer.state` and every state with a dimension is a DTensor
    sharded like θ in `state_dict()` (an 8-bit state's block scales too), "whole" where they are the whole tensor,
    else "mixed". Left out: tensors with an empty shard somewhere (every class steps them whole) or a one-element
    shard (not told apart from an 8-bit block's scale)."""
    model, opt = fsdp_pair(package, name, "fixed", mesh)
    fsdp_steps(model, opt, range(1), 1, rank)
    saved = opt.state_dict()["state"]
    world, layouts = mesh.size(), {}
    for pid, (param_name, p) in enumerate(model.named_parameters()):
        if min(chunk_sizes(p.shape[0], world)) * (p.numel() // p.shape[0]) <= 1:
            continue
        values = [v for v in opt.state[p].values() if torch.is_tensor(v)]
        if any(v.shape == p.to_local().shape for v in values):
            dims = [v for v in saved[pid].values() if torch.is_tensor(v) and v.dim()]
            sharded = all(isinstance(v, DTensor) and v.placements == p.placements for v in dims)
            layouts[param_name] = "shards" if sharded else "mixed"
        elif any(v.shape == p.shape for v in values):
            layouts[param_name] = "whole"
    return layouts


def shared_rho_scales(package, name, rank: int, mesh) -> list:
    """After one FSDP2 step, [(whole block, [the scale each rank that holds rows of it holds])] for the ALLoRA ρ
    blocks of parameters stepped as shards (8-bit classes: `row_scaling_q_scale` in optimizer.state), each block
    a rank holds listed with every rank's value."""
    model, opt = fsdp_pair(package, name, "fixed", mesh)
    fsdp_steps(model, opt, range(1), 1, rank)
    held = {}
    for pid, p in enumerate(model.parameters()):
        scales = opt.state[p].get("row_scaling_q_scale")
        if scales is None or opt.state[p]["row_scaling_q"].shape[0] == p.shape[0]:
            continue  # no ρ, or stepped whole
        first, count = own_rows(p)
        _, start, span = block_scale_span(p, first, count, BLOCKSIZE, by_rows=True)
        held.update({(pid, start + k): scales[k].item() for k in range(span)})
    every = [None] * mesh.size()
    dist.all_gather_object(every, held)
    blocks = {key for ranks in every for key in ranks}
    return [(key, [ranks[key] for ranks in every if key in ranks]) for key in sorted(blocks)]


def state_bytes(package, name, rank: int, mesh, world: int) -> list[int]:
    """[this rank's `state_bytes()` after STOP FSDP2 steps, one process's]."""
    model, opt = fsdp_pair(package, name, "fixed", mesh)
    fsdp_steps(model, opt, range(STOP), 1, rank)
    single_model = make_model(name)
    single = make_optimizer(package, name, single_model, "fixed")
    single_steps(single_model, single, range(STOP), 1, world)
    return [opt.state_bytes(), single.state_bytes()]


def avg_lr_error(package, name, rank: int, mesh, world: int) -> float:
    """The largest relative error of a saved `avg_lr` (the LR mask's mean, T27.8) of an FSDP2 run after STOP steps
    (in warm-up, where the mask moves): against the float64 mean of the run's own whole mask where the class steps
    its own shards (whose θ, and so mask, may part from one process's by round-off: this isolates the mean's sums),
    else against the one-process run's (the same step bit for bit where the class steps whole tensors). An 8-bit
    class's saved mask is the quantised one, not the one its mean is taken of: it is held to the one-process run's."""
    model, opt = fsdp_pair(package, name, "fixed", mesh)
    fsdp_steps(model, opt, range(STOP), 1, rank)
    ours = opt.state_dict()["state"]
    if steps_shards(package, name) and name not in BLOCKED:
        masks = {pid: e["lr_mask"] for pid, e in ours.items() if "avg_lr" in e}
        expected = {pid: (m.full_tensor() if isinstance(m, DTensor) else m).double().mean().item()
                    for pid, m in masks.items()}  # fmt: skip
    else:
        single_model = make_model(name)
        single = make_optimizer(package, name, single_model, "fixed")
        single_steps(single_model, single, range(STOP), 1, world)
        expected = {pid: e["avg_lr"] for pid, e in single.state_dict()["state"].items() if "avg_lr" in e}
    return max(abs(e["avg_lr"] - expected[pid]) / abs(expected[pid]) for pid, e in ours.items() if "avg_lr" in e)


def whole(model) -> list[torch.Tensor]:
    return [p.detach().full_tensor() for p in model.parameters()]


@functools.cache  # every rank makes the same calls, so every rank skips the same collectives
def train_fsdp(package, name, compat, micro: int, rank: int, mesh, warmup=None, kind=LoraNet,
               with_loss=False, gathered=False) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """`gathered`: the optimizer steps whole tensors even where its class steps shards (reference.sharding).
    Cached, as train_single: a run is a function of its arguments (make_model and batch seed everything)."""
    model, opt = fsdp_pair(package, name, compat, mesh, kind, warmup)
    if gathered:
        opt.steps_local_shards = False
    fsdp_steps(model, opt, range(STEPS), micro, rank, with_loss=with_loss)
    return tuple(whole(model))


def fsdp_resumed(package, name, compat, rank: int, mesh, path: Path, route: str) -> list[torch.Tensor]:
    """STOP steps; the checkpoint, then a fresh FSDP2 model and optimizer resume from it and take the other steps.
    `full`: the full model and optimizer state dicts through torch.distributed.checkpoint's state_dict API, saved
    by rank 0 (weights_only), loaded with full_state_dict=True into the fresh optimizer's own state dict; `dcp`:
    `dcp.save` of the default (per-rank) optimizer state dict, `dcp.load` into the fresh one's."""
    model, opt = fsdp_pair(package, name, compat, mesh)
    fsdp_steps(model, opt, range(STOP), 1, rank)
    if rank == 0:  # one rank alone may take state_dict(): it makes no collective (the group's timeout says so)
        opt.state_dict()
    dist.barrier()
    full = StateDictOptions(full_state_dict=True)
    model_sd = get_model_state_dict(model, options=full)
    if route == "full":
        saved = {"model": model_sd, "optim": get_optimizer_state_dict(model, opt, options=full)}
        if rank == 0:
            torch.save(saved, path)
        dist.barrier()
        saved = torch.load(path, weights_only=True)
    else:
        dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)
    model, opt = fsdp_pair(package, name, compat, mesh)
    set_model_state_dict(model, model_sd, options=full)
    if route == "full":
        set_optimizer_state_dict(model, opt, saved["optim"], options=full)
    else:
        template = {"optim": get_optimizer_state_dict(model, opt)}
        dcp.load(template, checkpoint_id=path)
        set_optimizer_state_dict(model, opt, template["optim"])
    fsdp_steps(model, opt, range(STOP, STEPS), 1, rank)
    return whole(model)


def single_steps(model, opt, steps: range, micro: int, world: int, with_loss=False) -> None:
    """`with_loss`: each step is given the mean over the ranks of their last micro-batch's loss."""
    params = list(model.parameters())
    for step in steps:
        total, losses = [torch.zeros_like(p) for p in params], []
        for rank in range(world):
            model.zero_grad()
            for m in range(micro):
                loss = loss_of(model, batch(step, rank, m))
                loss.backward()
            losses.append(loss.item())
            for t, p in zip(total, params, strict=True):
                t.add_(p.grad / world)
        for t, p in zip(total, params, strict=True):
            p.grad = t
        opt.step(loss=sum(losses) / world) if with_loss else opt.step()


@functools.cache  # the same run is the partner of several cases
def train_single(package, name, compat, micro: int, world: int, warmup=None, perturbed=False,
                 kind=LoraNet, with_loss=False) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """`perturbed`: the optimizer in harness.RoundingPerturbed (one rounding error on its inputs each step).
    Cached: a run is a function of its arguments (make_model and batch seed everything)."""
    model = make_model(name, kind)
    opt = make_optimizer(package, name, model, compat, warmup)
    opt = RoundingPerturbed(opt) if perturbed else opt
    single_steps(model, opt, range(STEPS), micro, world, with_loss)
    return tuple(p.detach().clone() for p in model.parameters())


def single_resumed(package, name, compat, path: Path, world: int) -> list[torch.Tensor]:
    """The 2 → 1 resume: one process, without torch.distributed, loads the full checkpoint that 2 FSDP2 ranks
    saved (fsdp_resumed) and takes the other steps on the same global batches."""
    saved = torch.load(path, weights_only=True)
    model = make_model(name)
    opt = make_optimizer(package, name, model, compat)
    model.load_state_dict(saved["model"])
    set_optimizer_state_dict(model, opt, saved["optim"])
    single_steps(model, opt, range(STOP, STEPS), 1, world)
    return [p.detach().clone() for p in model.parameters()]


def from_one_process(package, name, compat, rank: int, mesh, path: Path, world: int) -> list[torch.Tensor]:
    """The 1 → 2 resume: rank 0 alone trains STOP steps as one process and saves `state_dict()` (torch.save,
    loaded weights_only); fresh FSDP2 ranks load it with `load_state_dict` (whole tensors, not DTensors) and take
    the other steps."""
    if rank == 0:
        model = make_model(name)
        opt = make_optimizer(package, name, model, compat)
        single_steps(model, opt, range(STOP), 1, world)
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
    dist.barrier()
    saved = torch.load(path, weights_only=True)
    model, opt = fsdp_pair(package, name, compat, mesh)
    set_model_state_dict(model, saved["model"], options=StateDictOptions(full_state_dict=True))
    opt.load_state_dict(saved["optim"])
    fsdp_steps(model, opt, range(STOP, STEPS), 1, rank)
    return whole(model)


def worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def worst_scaled(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(scaled_error(y, x) for x, y in zip(a, b, strict=True))


def compare(results: dict, case: str, run: list[torch.Tensor], single: list[torch.Tensor], limit=None) -> None:
    """`limit` (a class that steps its own shards): the run's scaled error → the bound it is held to (`limit_of`);
    the case then records [scaled error, |Δθ| vs rank 0, bound]."""
    first = [t.clone() for t in run]
    for t in first:
        dist.broadcast(t, 0)
    if limit is None:
        results[case] = [worst(run, single), worst(run, first)]
    else:
        err = worst_scaled(run, single)
        results[case] = [err, worst(run, first), limit(err)]


def steps_shards(package, name) -> bool:
    return getattr(getattr(package, VARIANTS.get(name, (name,))[0]), "steps_local_shards", False)


def limit_of(package, name, compat, micro: int, world: int, warmup=None, kind=LoraNet, with_loss=False):
    """For a class that steps its own shards (else None): error → the free-running bound (harness.free_running_limit:
    FREE_RUNNING_FP32, or SELF_DIVERGENCE × how far one rounding of the inputs carries the reference over the
    single-process run). Its shards' sums are added in another order than one process adds them, a rounding
    difference of the same kind as the fast path's from the reference."""
    if not steps_shards(package, name):
        return None

    def self_divergence():
        plain = train_single(reference, name, compat, micro, world, warmup, kind=kind, with_loss=with_loss)
        perturbed = train_single(reference, name, compat, micro, world, warmup, True, kind, with_loss)
        return worst_scaled(perturbed, plain)

    return lambda err: free_running_limit(err, FREE_RUNNING_FP32.bound, self_divergence)


def three_ranks(directory: str, rank: int, mesh) -> dict:
    """On 3 ranks (uneven shards, an 8-bit block's scales cut 3 ways, a ρ block shared by 3), for the fast classes
    that step their own shards: FSDP2 against the same ranks' run stepping whole tensors (one process's step on
    the same gradients: a third of a gradient sum rounds, and the one-process emulation of `single_steps` adds
    the thirds in another order, which upstream HinaAdamW's stale ADOPT denominator magnifies past the bound),
    the DCP resume against the run not interrupted, and the state layout."""
    fsdp, resumed, layouts = {}, {}, {}
    for name in (n for n in RUN if steps_shards(optimized, n)):
        layouts[f"optimized.{name}"] = state_layout(optimized, name, rank, mesh)
        for compat in COMPATS:
            case = f"optimized.{name} {compat}"
            run = train_fsdp(optimized, name, compat, 1, rank, mesh)
            gathered = train_fsdp(optimized, name, compat, 1, rank, mesh, gathered=True)
            compare(fsdp, case, run, gathered, limit_of(optimized, name, compat, 1, 3))
            path = Path(directory) / case
            compare(resumed, case, fsdp_resumed(optimized, name, compat, rank, mesh, path, "dcp"), run)
    return {"fsdp": fsdp, "resumed": resumed, "state_layout": layouts}


def main(directory: str) -> None:
    torch.set_num_threads(1)  # the same kernels, hence the same rounding, in every run
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))  # a collective one rank skips fails here
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    warnings.simplefilter("ignore")  # the family's warm-up and clamp warnings, once per optimizer
    RANKS[0] = world
    if world == 3:
        torch.save(three_ranks(directory, rank, mesh), Path(directory) / f"rank{rank}.pt")
        dist.destroy_process_group()
        return
    ddp, fsdp, fsdp_early, ddp_loss, fsdp_loss, resumed, checkpoints = {}, {}, {}, {}, {}, {}, []
    collectives, layouts, onto_ranks, avg_lrs, held, rho_scales = {}, {}, {}, {}, {}, {}
    for package in (reference, optimized):
        for name in RUN:
            collectives[f"{package.__name__}.{name}"] = collectives_per_step(package, name, rank, mesh)
            layouts[f"{package.__name__}.{name}"] = state_layout(package, name, rank, mesh)
            if steps_shards(package, name):
                held[f"{package.__name__}.{name}"] = state_bytes(package, name, rank, mesh, world)
            if steps_shards(package, name) and name in BLOCKED and name not in BY_NAME:  # (HinaAdamW has no ρ)
                rho_scales[f"{package.__name__}.{name}"] = shared_rho_scales(package, name, rank, mesh)
            if name in KEEPS_AVG_LR:
                avg_lrs[f"{package.__name__}.{name}"] = avg_lr_error(package, name, rank, mesh, world)
            for compat in COMPATS:
                for bucket_view, micro in DDP_SETTINGS:
                    compare(ddp, f"{package.__name__}.{name} {compat} bucket_view={bucket_view} micro={micro}",
                            train_ddp(package, name, compat, bucket_view, micro, rank),
                            train_single(package, name, compat, micro, world))  # fmt: skip
                for micro in FSDP_MICRO:
                    compare(fsdp, f"{package.__name__}.{name} {compat} micro={micro}",
                            train_fsdp(package, name, compat, micro, rank, mesh),
                            train_single(package, name, compat, micro, world),
                            limit_of(package, name, compat, micro, world))  # fmt: skip
                if name in CONTEXTUAL:  # given the loss: every rank's context must learn the same
                    compare(ddp_loss, f"{package.__name__}.{name} {compat}",
                            train_ddp(package, name, compat, False, 1, rank, with_loss=True),
                            train_single(package, name, compat, 1, world, with_loss=True))  # fmt: skip
                    compare(fsdp_loss, f"{package.__name__}.{name} {compat}",
                            train_fsdp(package, name, compat, 1, rank, mesh, with_loss=True),
                            train_single(package, name, compat, 1, world, with_loss=True),
                            limit_of(package, name, compat, 1, world, with_loss=True))  # fmt: skip
                if steps_shards(package, name):  # its early phase (TAM, OrthoGrad, upstream's column norms) too
                    setting = "use_orthogonal_grad=True" if name in BY_NAME else f"warmup_steps={EARLY_WARMUP}"
                    compare(fsdp_early, f"{package.__name__}.{name} {compat} {setting}",
                            train_fsdp(package, name, compat, 1, rank, mesh, EARLY_WARMUP, NO_GAIN),
                            train_single(package, name, compat, 1, world, EARLY_WARMUP, kind=NO_GAIN),
                            limit_of(package, name, compat, 1, world, EARLY_WARMUP, NO_GAIN))  # fmt: skip
                case = f"{package.__name__}.{name} {compat}"
                path = Path(directory) / f"{case}.pt"
                # the run each resume must reproduce bit for bit: the FSDP2 run that was not interrupted
                uninterrupted = (train_fsdp(package, name, compat, 1, rank, mesh) if steps_shards(package, name)
                                 else train_single(package, name, compat, 1, world))  # fmt: skip
                compare(resumed, case, fsdp_resumed(package, name, compat, rank, mesh, path, "full"), uninterrupted)
                checkpoints.append((package, name, compat, case, path))
                onto = from_one_process(package, name, compat, rank, mesh, Path(directory) / f"{case}.one.pt", world)
                single = train_single(package, name, compat, 1, world)
                compare(onto_ranks, case, onto, single, limit_of(package, name, compat, 1, world))
                compare(
                    resumed,
                    f"{case} dcp",
                    fsdp_resumed(package, name, compat, rank, mesh, Path(directory) / f"{case}.dcp", "dcp"),
                    uninterrupted,
                )
    dist.destroy_process_group()
    one = {}  # each rank resumes every checkpoint alone, without torch.distributed: world size 2 → 1
    for package, name, compat, case, path in checkpoints:
        single, limit = train_single(package, name, compat, 1, world), limit_of(package, name, compat, 1, world)
        run = single_resumed(package, name, compat, path, world)
        err = worst_scaled(run, single)
        one[case] = [worst(run, single), 0.0] if limit is None else [err, 0.0, limit(err)]
    results = {
        "ddp": ddp,
        "fsdp": fsdp,
        "fsdp_early": fsdp_early,
        "ddp_with_loss": ddp_loss,
        "fsdp_with_loss": fsdp_loss,
        "resumed": resumed,
        "to_one_process": one,
        "from_one_process": onto_ranks,
        "collectives": collectives,
        "state_layout": layouts,
        "state_bytes": held,
        "rho_scales": rho_scales,
        "avg_lr": avg_lrs,
    }
    torch.save(results, Path(directory) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
