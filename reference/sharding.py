"""FSDP2 parameters (DTensors sharded by `torch.distributed.fsdp.fully_shard`): each step sees whole tensors.

The family's statistics are not per element: AGR divides by the group's Σ|g|, adaptive weight decay uses the
group's mean and spread, TAM, OrthoGrad, the RMS clip and Cautious use per-tensor sums, and the Improved
heuristics use whole-tensor stencils, SVD and FFT. A step on one rank's shard alone would compute something
else than one process computes. So for the step every DTensor parameter is gathered with its (already
reduced) gradient and its state, the ordinary step runs on the whole tensors, and each rank keeps its own
shard of the result. The state is then held whole, and identical, on every rank: what one process computes,
at the memory of one process (issue 26: sharded state is the fast path's next step).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


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
    def wrapper(self, *args, **kwargs):
        with whole_tensors(self, stepping=False):
            return method(self, *args, **kwargs)

    return wrapper


def whole_tensor_save(method):
    """Decorates `state_dict`: it sees the twins that exist, with no collective, so one rank alone may save
    (`if rank == 0: torch.save(opt.state_dict(), ...)`). Nested uses are no-ops."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with whole_tensors(self, stepping=False, make=False):
            return method(self, *args, **kwargs)

    return wrapper


def _whole_param(optimizer, p: DTensor, stepping: bool, make: bool, created: dict) -> torch.nn.Parameter | None:
    """p's whole twin, the same object at every step (the fast classes keep their buffers over it), or None
    where it has none and `make` is off. A twin made now (added to `created`, p → twin) gathers p's values;
    a step (`stepping`) gathers the values of an existing twin again, and the gradient."""
    twins = optimizer.__dict__.setdefault("_whole_params", {})
    whole = twins.get(p)
    if whole is None:
        if not make:
            return None
        whole = twins[p] = created[p] = torch.nn.Parameter(p.detach().full_tensor(), requires_grad=p.requires_grad)
        if hasattr(p, "_is_lora_layer"):  # the one parameter attribute the family reads (T9d)
            whole._is_lora_layer = p._is_lora_layer
    elif stepping:
        whole.detach().copy_(p.detach().full_tensor())
    if stepping:
        whole.grad = None if p.grad is None else p.grad.full_tensor()
    return whole


@contextmanager
def whole_tensors(optimizer, stepping: bool = True, make: bool = True):
    """Within: each DTensor parameter of `optimizer` is replaced in its group by its whole twin (`_whole_param`),
    and its state moves there (gathered where it was sharded, unless nothing may be gathered: `make` off).
    Tables an optimizer keys by parameter (HinaAdamW's LoRA layout) are rebuilt over new twins by its
    `_twins_created(p → twin)`, once they are in the groups. After a step that did not raise, each rank keeps
    its shard of the result; the state, now whole, returns to the DTensor's key either way."""
    swapped, created = [], {}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            whole = _whole_param(optimizer, p, stepping, make, created) if isinstance(p, DTensor) else None
            if whole is None:
                continue
            group["params"][i] = whole
            if p in optimizer.state:  # the same dict: the fast classes' buckets know their entries
                entry = optimizer.state[whole] = optimizer.state.pop(p)
                if make:
                    entry.update({k: v.full_tensor() for k, v in entry.items() if isinstance(v, DTensor)})
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
