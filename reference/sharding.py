"""FSDP2 parameters (DTensors sharded by `torch.distributed.fsdp.fully_shard`): each step sees whole tensors.

The family's statistics are not per element: AGR divides by the group's Σ|g|, adaptive weight decay uses the
group's mean and spread, TAM, OrthoGrad, the RMS clip and Cautious use per-tensor sums, and the Improved
heuristics use whole-tensor stencils, SVD and FFT. A step on one rank's shard alone would compute something
else than one process computes. So for the step every DTensor parameter is gathered with its (already
reduced) gradient, in one all_gather per mesh and dtype for all of them (`gather_whole`), the ordinary step
runs on the whole tensors, and each rank keeps its own shard of the result. The state is then held whole, and
identical, on every rank: what one process computes, at the memory of one process (issue 26: sharded state
is the fast path's next step).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor


def whole_tensor_step(step):
    """Decorates an optimizer's `step(closure=None, ...)`: with DTensor parameters, the closure runs first (on
    the sharded model, as FSDP2 needs), then the step runs on whole tensors (`whole_tensors`)."""

    @functools.wraps(step)
    def wrapper(self, closure=None, *args, **kwargs):
        if not any(isinstance(p, DTensor) for group in self.param_groups for p in group["params"]):
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
            return method(self, _whole_states(state_dict), *args, **kwargs)

    return wrapper


def _whole_states(state_dict):
    """`state_dict` with each DTensor state value whole (a collective, as the load runs on every rank): the state
    is whole on every rank, and DCP's full-state-dict load shards a value where the template held a DTensor
    (HinaAdamW's SPD anchor, copied from θ at construction)."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        return state_dict
    if not any(isinstance(v, DTensor) for e in state_dict["state"].values() if isinstance(e, dict) for v in e.values()):
        return state_dict
    state = {
        pid: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in e.items()} if isinstance(e, dict) else e
        for pid, e in state_dict["state"].items()
    }
    return {**state_dict, "state": state}


def whole_tensor_save(method):
    """Decorates `state_dict`: it sees the twins that exist, with no collective, so one rank alone may save
    (`if rank == 0: torch.save(opt.state_dict(), ...)`). Nested uses are no-ops."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with whole_tensors(self, stepping=False, make=False):
            return method(self, *args, **kwargs)

    return wrapper


def _dim0_rows(t: DTensor) -> list[int] | None:
    """Rows of dim 0 each rank holds, where `t` is sharded on dim 0 of a 1-D mesh as torch.chunk splits it
    (FSDP2's layout); None for any other layout."""
    mesh = t.device_mesh
    if mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
        return None
    world, n = mesh.size(), t.shape[0]
    chunk = -(-n // world)
    rows = [max(0, min(chunk, n - r * chunk)) for r in range(world)]
    return rows if rows[mesh.get_local_rank()] == t.to_local().shape[0] else None


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


def _twins(optimizer, params: list[DTensor], stepping: bool, make: bool, created: dict) -> dict:
    """p → p's whole twin, the same object at every step (the fast classes keep their buffers over it), for the
    DTensor parameters `params` that have one or get one (`make`). A twin made now (added to `created`) gathers
    p's values; a step (`stepping`) gathers the values of an existing twin again, and the gradients; with
    `make`, a state value that is a DTensor (loaded, or made from the sharded parameter) is gathered in place.
    All in one `gather_whole`."""
    twins = optimizer.__dict__.setdefault("_whole_params", {})
    chosen = [p for p in params if p in twins or make]
    values = [p for p in chosen if stepping or p not in twins]
    grads = [p for p in chosen if stepping and p.grad is not None]
    states = [(optimizer.state[p], key) for p in chosen if make and p in optimizer.state
              for key, value in optimizer.state[p].items() if isinstance(value, DTensor)]  # fmt: skip
    gathered = iter(gather_whole([p.detach() for p in values] + [p.grad for p in grads] + [e[k] for e, k in states]))
    for p in values:
        if p in twins:
            twins[p].detach().copy_(next(gathered))
        else:
            twin = twins[p] = created[p] = torch.nn.Parameter(next(gathered), requires_grad=p.requires_grad)
            if hasattr(p, "_is_lora_layer"):  # the one parameter attribute the family reads (T9d)
                twin._is_lora_layer = p._is_lora_layer
    if stepping:
        for p in chosen:
            twins[p].grad = None
        for p in grads:
            twins[p].grad = next(gathered)
    for entry, key in states:
        entry[key] = next(gathered)
    return {p: twins[p] for p in chosen}


@contextmanager
def whole_tensors(optimizer, stepping: bool = True, make: bool = True):
    """Within: each DTensor parameter of `optimizer` is replaced in its group by its whole twin (`_twins`),
    and its state moves there (gathered by `_twins` where it was sharded, unless nothing may be gathered: `make`
    off).
    Tables an optimizer keys by parameter (HinaAdamW's LoRA layout) are rebuilt over new twins by its
    `_twins_created(p → twin)`, once they are in the groups. After a step that did not raise, each rank keeps
    its shard of the result; the state, now whole, returns to the DTensor's key either way."""
    swapped, created = [], {}
    params = [p for group in optimizer.param_groups for p in group["params"] if isinstance(p, DTensor)]
    twins = _twins(optimizer, params, stepping, make, created) if params else {}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            whole = twins.get(p) if isinstance(p, DTensor) else None
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
            if stepped:
                # every rank holds the same whole result: each takes its shard locally, with no collective
                p.detach().copy_(distribute_tensor(whole.detach(), p.device_mesh, p.placements, src_data_rank=None))
            whole.grad = None
