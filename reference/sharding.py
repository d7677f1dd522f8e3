"""FSDP2 parameters (DTensors sharded by `torch.distributed.fsdp.fully_shard`): each step sees whole tensors.

The family's statistics are not per element: AGR divides by the group's Σ|g|, adaptive weight decay uses the
group's mean and spread, TAM, OrthoGrad, the RMS clip and Cautious use per-tensor sums, and the Improved
heuristics use whole-tensor stencils, SVD and FFT. A step on one rank's shard alone would compute something
else than one process computes. So for the step every DTensor parameter is gathered with its (already
reduced) gradient, in one all_gather per mesh and dtype for all of them (`gather_whole`), the ordinary step
runs on the whole tensors, and each rank keeps its own shard of the result. The state is then held whole, and
identical, on every rank: what one process computes, at the memory of one process.

A class that reduces across the mesh itself (`steps_local_shards`: the fast Automagic_CameAMP, C-Optim, their 8-bit
classes and HinaAdamW, whose statistics are all sums) steps each rank's own rows instead: the twin is the local
shard (`_local_shard_of` names its DTensor), nothing is gathered, and the state is held per shard. Its
`state_dict()` gives those states as DTensors sharded like θ (so torch.distributed.checkpoint saves, gathers and
re-shards them as any FSDP2 optimizer's), and `load_state_dict` takes this rank's rows of a DTensor or of a whole
tensor. A tensor with fewer rows than ranks (an empty shard somewhere) is stepped whole as above, as the class's
reductions need every rank to hold rows. A class may step fewer tensors as shards (`_shard_fits(p, rows)`: the
8-bit classes, whose blocks must not straddle ranks; HinaAdamW, whose LoRA factors read the whole pair) and index
some states otherwise than by p's rows (`_block_span`: an 8-bit state's block scales).
"""

from __future__ import annotations

import functools
import math
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

from .persistence import saved_param_map


def is_dtensor(x) -> bool:
    """Whether x is a DTensor, without importing torch.distributed.tensor (~1 s) in a process that has not: no
    DTensor exists before its module is imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(x, module.DTensor)


def whole_tensor_step(step):
    """Decorates an optimizer's `step(closure=None, ...)`: with DTensor parameters, the closure runs first (on
    the sharded model, as FSDP2 needs), then the step runs on whole tensors (`whole_tensors`)."""

    @functools.wraps(step)
    def wrapper(self, closure=None, *args, **kwargs):
        if not any(is_dtensor(p) for group in self.param_groups for p in group["params"]):
            return step(self, closure, *args, **kwargs)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            closure = lambda: loss  # noqa: E731  the step returns it as it returns a closure's loss
        with whole_tensors(self):
            return step(self, closure, *args, **kwargs)

    return wrapper


def whole_tensor_load(method):
    """Decorates `load_state_dict`: it loads into the whole twins that the step sees (made here if none exist
    yet, which gathers their values: call it on every rank, as torch.distributed.checkpoint does), so state
    keyed by tensor (the fast classes' buffers) is found; nothing is written back. Nested uses are no-ops."""

    @functools.wraps(method)
    def wrapper(self, state_dict, *args, **kwargs):
        with whole_tensors(self, stepping=False):
            return method(self, _held_states(self, state_dict), *args, **kwargs)

    return wrapper


def _held_states(optimizer, state_dict):
    """`state_dict` with each state value as the step holds it (a collective, as the load runs on every rank): a
    local twin's rows (`_local_value`), else each DTensor value whole (the state is whole on every rank, and DCP's
    full-state-dict load shards a value where the template held a DTensor: HinaAdamW's SPD anchor, copied from θ
    at construction). Called within `whole_tensors`, so the groups hold the twins."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        return state_dict
    owners = _local_owners(optimizer, state_dict)
    entries = state_dict["state"].items()
    if not owners and not any(is_dtensor(v) for _, e in entries if isinstance(e, dict) for v in e.values()):
        return state_dict
    state = {}
    for pid, e in entries:
        if isinstance(e, dict) and pid in owners:
            e = {k: _local_value(optimizer, owners[pid], k, v) for k, v in e.items()}
        elif isinstance(e, dict):
            e = {k: v.full_tensor() if is_dtensor(v) else v for k, v in e.items()}
        state[pid] = e
    return {**state_dict, "state": state}


def _local_owners(optimizer, state_dict) -> dict:
    """Saved id → the DTensor parameter whose local twin holds its state (the groups hold the twins)."""
    try:
        id_map = saved_param_map(optimizer, state_dict)
    except (KeyError, TypeError, ValueError):  # a malformed checkpoint: the load's own checks name what is wrong
        return {}
    return {pid: p._local_shard_of for pid, p in id_map.items() if hasattr(p, "_local_shard_of")}


def own_rows(p: DTensor) -> tuple[int, int]:
    """(first row, row count) of dim 0 that this rank holds of `p` (sharded as `_dim0_rows` requires)."""
    rows = _dim0_rows(p)
    rank = p.device_mesh.get_local_rank()
    return sum(rows[:rank]), rows[rank]


def _state_span(optimizer, p: DTensor, key: str) -> tuple[int, int, int]:
    """(whole length, first, count) of dim 0 of state `key` of `p` on this rank: p's rows, or what the optimizer's
    `_block_span(p, key, first, count)` gives for a state indexed otherwise (an 8-bit state's block scales)."""
    first, count = own_rows(p)
    span = getattr(optimizer, "_block_span", None)
    return (span and span(p, key, first, count)) or (p.shape[0], first, count)


def _chunk_span(p: DTensor, whole: int) -> tuple[int, int]:
    """(first, count) of the `whole` entries of dim 0 that a DTensor sharded like `p` holds on this rank."""
    counts = chunk_sizes(whole, p.device_mesh.size())
    rank = p.device_mesh.get_local_rank()
    return sum(counts[:rank]), counts[rank]


def _local_value(optimizer, p: DTensor, key: str, value):
    """State `key` of `p` as its local twin holds it: this rank's part (`_state_span`) of a DTensor or of a whole
    tensor, any other value (a scalar, a per-tensor 0-d state) as it is."""
    from torch.distributed.tensor import Shard

    whole, first, count = _state_span(optimizer, p, key)
    if is_dtensor(value):
        same = value.device_mesh == p.device_mesh and tuple(value.placements) == (Shard(0),)
        if same and value.shape[0] == whole and _chunk_span(p, whole) == (first, count):
            return value.to_local()
        value = value.full_tensor()
    if torch.is_tensor(value) and value.dim() and value.shape[0] == whole:
        return value.narrow(0, first, count)
    return value


def _sharded_value(optimizer, p: DTensor, key: str, value):
    """A local twin's state `key` as `state_dict()` gives it: one with this rank's part (`_state_span`) as a
    DTensor sharded like p (no collective; of a part that shares an 8-bit block with another rank's, as torch.chunk
    assigns the entries: `_shard_fits` checks it is held), any other as it is."""
    if not torch.is_tensor(value) or is_dtensor(value) or not value.dim():
        return value
    whole, first, count = _state_span(optimizer, p, key)
    if value.shape[0] != count:
        return value
    chunk_first, chunk_count = _chunk_span(p, whole)
    shape = (whole, *value.shape[1:])
    stride = tuple(math.prod(shape[d + 1 :]) for d in range(len(shape)))
    local = value.narrow(0, chunk_first - first, chunk_count) if chunk_count else value[:0]
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=shape, stride=stride)


def block_scale_span(p: DTensor, first: int, count: int, blocksize: int, by_rows: bool = False) -> tuple[int, int, int]:
    """(whole length, first, count) of the block scales of an 8-bit state of `p` (blocks of `blocksize` elements of
    the flattened tensor, or of its rows: `by_rows`) that a rank holding rows [first, first + count) holds: those of
    the blocks it holds elements of."""
    width = 1 if by_rows else math.prod(p.shape[1:])
    held = first * width // blocksize
    return -(-p.shape[0] * width // blocksize), held, -(-(first + count) * width // blocksize) - held


def blocks_fit_shards(rows: list[int], width: int, blocksize: int) -> bool:
    """Whether blocks of `blocksize` consecutive elements of a tensor whose dim 0 is split in `rows` (ranks' row
    counts, `width` elements a row) each lie within one rank's rows, and fall to the ranks as torch.chunk splits
    their count, so a rank's blocks are the whole tensor's and their scales shard as a DTensor shards."""
    starts = [sum(rows[:r]) * width for r in range(len(rows))]
    counts = [-(-n * width // blocksize) for n in rows]
    return all(s % blocksize == 0 for s in starts) and counts == chunk_sizes(sum(counts), len(rows))


def blocks_cover_chunks(rows: list[int], blocksize: int) -> bool:
    """Whether, for blocks of `blocksize` rows (ALLoRA's ρ: one entry a row) with dim 0 split in `rows`, every rank
    holds rows of each block torch.chunk assigns it of the block count, so its scales shard as a DTensor shards
    (a block two ranks share has one scale, reduced across them)."""
    starts = [sum(rows[:r]) for r in range(len(rows))]
    chunks = chunk_sizes(-(-sum(rows) // blocksize), len(rows))
    for r, (start, n) in enumerate(zip(starts, rows, strict=True)):
        held_first, held_end = start // blocksize, -(-(start + n) // blocksize)
        chunk_first = sum(chunks[:r])
        if chunks[r] and not (held_first <= chunk_first and chunk_first + chunks[r] <= held_end):
            return False
    return True


def whole_tensor_save(method):
    """Decorates `state_dict`: it sees the twins that exist, with no collective, so one rank alone may save
    (`if rank == 0: torch.save(opt.state_dict(), ...)`); a local twin's states become DTensors (`_sharded_value`).
    Nested uses are no-ops."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with whole_tensors(self, stepping=False, make=False):
            sd = method(self, *args, **kwargs)
            owners = _local_owners(self, sd)
        for pid, p in owners.items():
            if isinstance(sd["state"].get(pid), dict):  # a new dict: torch's holds optimizer.state's own
                sd["state"][pid] = {k: _sharded_value(self, p, k, v) for k, v in sd["state"][pid].items()}
        return sd

    return wrapper


def _dim0_rows(t: DTensor) -> list[int] | None:
    """Rows of dim 0 each rank holds, where `t` is sharded on dim 0 of a 1-D mesh as torch.chunk splits it
    (FSDP2's layout); None for any other layout."""
    from torch.distributed.tensor import Shard

    mesh = t.device_mesh
    if mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
        return None
    rows = chunk_sizes(t.shape[0], mesh.size())
    return rows if rows[mesh.get_local_rank()] == t.to_local().shape[0] else None


def chunk_sizes(n: int, world: int) -> list[int]:
    """How torch.chunk splits n rows over `world` ranks."""
    chunk = -(-n // world)
    return [max(0, min(chunk, n - r * chunk)) for r in range(world)]


def gather_whole(tensors: list[DTensor]) -> list[torch.Tensor]:
    """Each DTensor of `tensors` whole, with one all_gather per mesh and dtype for those sharded on dim 0 of a
    1-D mesh (`DTensor.full_tensor()` makes one per tensor), any other layout by `full_tensor()`. Every rank
    must call it with the same tensors in the same order."""
    out: list = [None] * len(tensors)
    batches: dict = {}
    for k, t in enumerate(tensors):
        rows = _dim0_rows(t)
        if rows is None:
            out[k] = t.full_tensor()
        else:
            batches.setdefault((t.device_mesh, t.dtype), []).append((k, rows, math.prod(t.shape[1:])))
    for (mesh, dtype), items in batches.items():
        world, rank = mesh.size(), mesh.get_local_rank()
        lengths = [sum(rows[r] * width for _, rows, width in items) for r in range(world)]
        longest = max(lengths)
        device = tensors[items[0][0]].to_local().device
        local = torch.empty(longest, dtype=dtype, device=device)  # the padding past a rank's length is never read
        if lengths[rank]:
            torch.cat([tensors[k].to_local().reshape(-1) for k, _, _ in items], out=local[: lengths[rank]])
        gathered = torch.empty(world * longest, dtype=dtype, device=device)
        dist.all_gather_into_tensor(gathered, local, group=mesh.get_group())
        gathered = gathered.view(world, longest)
        starts = [0] * world
        for k, rows, width in items:
            parts = []
            for r in range(world):
                parts.append(gathered[r, starts[r] : starts[r] + rows[r] * width])
                starts[r] += rows[r] * width
            out[k] = torch.cat(parts).view(tensors[k].shape)
    return out


def _steps_shard(optimizer, p: DTensor) -> bool:
    """Whether `p` steps as its local shard (`steps_local_shards`): sharded on dim 0 of a 1-D mesh with rows on
    every rank."""
    rows = _dim0_rows(p) if getattr(optimizer, "steps_local_shards", False) else None
    fits = getattr(optimizer, "_shard_fits", None)
    return rows is not None and min(rows) > 0 and (fits is None or fits(p, rows))


def _twins(optimizer, params: list[DTensor], stepping: bool, make: bool, created: dict) -> dict:
    """p → p's twin, the same object at every step (the fast classes keep their buffers over it), for the
    DTensor parameters `params` that have one or get one (`make`): a local twin (`_steps_shard`) holds p's own
    rows, copied; a whole twin made now (added to `created`) gathers p's values, and a step (`stepping`) gathers
    the values of an existing twin again, and the gradients; with `make`, a state value that is a DTensor (loaded,
    or made from the sharded parameter) is gathered in place, or cut to a local twin's rows. All whole values in
    one `gather_whole`."""
    twins = optimizer.__dict__.setdefault("_whole_params", {})
    chosen = [p for p in params if p in twins or make]
    local = {p for p in chosen if (hasattr(twins[p], "_local_shard_of") if p in twins else _steps_shard(optimizer, p))}
    whole = [p for p in chosen if p not in local]
    values = [p for p in whole if stepping or p not in twins]
    grads = [p for p in whole if stepping and p.grad is not None]
    states = [(optimizer.state[p], key) for p in whole if make and p in optimizer.state
              for key, value in optimizer.state[p].items() if is_dtensor(value)]  # fmt: skip
    gathered = iter(gather_whole([p.detach() for p in values] + [p.grad for p in grads] + [e[k] for e, k in states]))
    fresh = set(values)  # (sets of tensors compare by identity)
    for p in chosen:
        if p in local and p in twins:
            if stepping:
                twins[p].detach().copy_(p.detach().to_local())
        elif p in local or p in fresh:
            value = p.detach().to_local().clone() if p in local else next(gathered)
            if p in twins:
                twins[p].detach().copy_(value)
                continue
            twin = twins[p] = created[p] = torch.nn.Parameter(value, requires_grad=p.requires_grad)
            if p in local:
                twin._local_shard_of = p
            if hasattr(p, "_is_lora_layer"):  # the one parameter attribute the family reads (T9d)
                twin._is_lora_layer = p._is_lora_layer
    if stepping:
        for p in chosen:
            twins[p].grad = None
        for p in grads:
            twins[p].grad = next(gathered)
        for p in local:
            twins[p].grad = None if p.grad is None else p.grad.to_local()
    for entry, key in states:
        entry[key] = next(gathered)
    for p in local:
        if make and p in optimizer.state:
            entry = optimizer.state[p]
            entry.update({k: _local_value(optimizer, p, k, v) for k, v in entry.items() if is_dtensor(v)})
    return {p: twins[p] for p in chosen}


@contextmanager
def whole_tensors(optimizer, stepping: bool = True, make: bool = True):
    """Within: each DTensor parameter of `optimizer` is replaced in its group by its twin (`_twins`: whole, or
    its local shard), and its state moves there (gathered, or cut to the local rows, by `_twins` where it was a
    DTensor, unless nothing may be gathered: `make` off).
    Tables an optimizer keys by parameter (HinaAdamW's LoRA layout) are rebuilt over new twins by its
    `_twins_created(p → twin)`, once they are in the groups. After a step that did not raise, each rank keeps
    its shard of the result; the state, now whole, returns to the DTensor's key either way."""
    swapped, created = [], {}
    params = [p for group in optimizer.param_groups for p in group["params"] if is_dtensor(p)]
    twins = _twins(optimizer, params, stepping, make, created) if params else {}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            whole = twins.get(p) if is_dtensor(p) else None
            if whole is None:
                continue
            group["params"][i] = whole
            if p in optimizer.state:  # the same dict: the fast classes' buckets know their entries
                optimizer.state[whole] = optimizer.state.pop(p)
            swapped.append((group, i, p, whole))
    if created and hasattr(optimizer, "_twins_created"):
        optimizer._twins_created(created)
    stepped = False
    try:
        yield
        stepped = stepping
    finally:
        for group, i, p, whole in swapped:
            group["params"][i] = p
            if whole in optimizer.state:
                optimizer.state[p] = optimizer.state.pop(whole)
            if stepped and hasattr(whole, "_local_shard_of"):
                p.detach().to_local().copy_(whole.detach())
            elif stepped:
                # every rank holds the same whole result: each takes its shard locally, with no collective
                from torch.distributed.tensor import distribute_tensor

                p.detach().copy_(distribute_tensor(whole.detach(), p.device_mesh, p.placements, src_data_rank=None))
            whole.grad = None
