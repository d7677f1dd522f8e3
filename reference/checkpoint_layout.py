"""One layout per saved entry at every step, so torch.distributed.checkpoint can resume (issue 26).

`dcp.load` and `set_optimizer_state_dict(..., full_state_dict=True)` read a checkpoint *into* the state dict
the resuming optimizer writes, and read only the keys that it holds. torch's optimizers write the same keys at
every step. This family wrote nothing for a parameter before its first step and deletes its warm-up state at
t == W (T27.1: `s`, `last_polarity`, the Improved family's `pre`, with their 8-bit forms). So the template of
a fresh optimizer held no state keys, `dcp.load` read none, and the run went on from a fresh state, silently.

`state_dict()` therefore writes every entry in its warm-up layout (`warm_layout`):
* an entry not stepped yet holds zeros: `step` 0, zero tensors and numbers;
* an entry past t == W holds the deleted keys as zeros expanded from one element. They take no memory and
  `torch.save` stores one element; DCP writes them out whole.

In upstream mode a non-fp32 parameter's entries also record their state dtypes (`records_dtypes`).

`load_state_dict` reads them back as the optimizer held them (`as_held`): an entry at step 0 is not started,
an entry past t == W drops the placeholders, and recorded dtypes are restored. A round trip is exact.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .checkpoint import SCHEMAS, _split
from .persistence import saved_param_map

WARMUP_BASES = ("s", "last_polarity", "pre")  # deleted at t == W (T27.1), with their 8-bit forms
DTYPES_KEY = "state_dtypes"  # "key:dtype,…" of an entry's float tensors, where they are recorded


SCHEDULED = ("params", "param_names", "lr", "initial_lr")  # group entries no layout depends on (lr schedules)
_LAYOUTS = WeakIdKeyDictionary()  # parameter → (optimizer, (shape, dtype, group settings), layout)


def group_settings(group) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in group.items() if k not in SCHEDULED))


def warm_layout(optimizer, p, group, settings: tuple) -> dict:
    """The entry `p` holds during warm-up: meta tensors (shape and dtype) and value types. It is the reference
    class's own `_warm_layout`, with the optimizer's settings, on a zero stand-in for `p` (θ's values do not
    matter; a DTensor's shape is the whole tensor's, which the step sees), kept per parameter while its shape,
    dtype and group settings (`group_settings(group)`) stay."""
    key = (tuple(p.shape), p.dtype, settings)
    kept = _LAYOUTS.get(p)
    if kept is not None and kept[0]() is optimizer and kept[1] == key:
        return kept[2]
    import reference  # the package imports this module through its classes

    readable = getattr(reference, type(optimizer).__name__)
    scratch = object.__new__(readable)
    scratch.__dict__.update(optimizer.__dict__)
    scratch.state = defaultdict(dict)
    stand_in = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
    entry = readable._warm_layout(scratch, stand_in, group)
    layout = {k: v.to("meta") if torch.is_tensor(v) else type(v) for k, v in entry.items()}
    _LAYOUTS[p] = (weakref.ref(optimizer), key, layout)
    return layout


def _zeros(like: torch.Tensor, device, expanded: bool, dtype=None) -> torch.Tensor:
    dtype = like.dtype if dtype is None else dtype
    if expanded:
        return torch.zeros((), dtype=dtype, device=device).expand(like.shape)
    return torch.zeros(like.shape, dtype=dtype, device=device)


def records_dtypes(optimizer, p) -> bool:
    """Whether `p`'s entries record their state dtypes: in upstream mode with a non-fp32 parameter, where
    upstream's own arithmetic moves some states to another dtype at the first step (seed 004's states of a bf16
    matrix to fp32, the Improved mask of an fp64 tensor to fp64 in the reference, …). A fresh entry then holds
    each float tensor in the widest dtype it may take, promote(dtype, θ's dtype, fp32), which DCP loads any
    saved value into exactly, and `as_held` casts the values back to the dtypes the checkpoint recorded."""
    return not optimizer.fixed and p.dtype != torch.float32


def _dtype_record(entry: dict) -> str:
    """The entry's float tensors' dtypes, but for a plain copy beside its 8-bit codes (upstream 8bit's v, which
    the class leaves out of the state dict [I-11b])."""
    return ",".join(f"{k}:{str(v.dtype).removeprefix('torch.')}" for k, v in sorted(entry.items())
                    if torch.is_tensor(v) and v.is_floating_point() and f"{k}_q" not in entry)  # fmt: skip


def _in_warm_layout(optimizer, sd: dict) -> dict:
    """torch's state dict `sd` with each entry in its warm-up layout (a state_dict post-hook)."""
    params = saved_param_map(optimizer, sd)
    settings = [group_settings(g) for g in optimizer.param_groups]
    group_of = {p: i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    state = dict(sd["state"])
    for pid, p in params.items():
        entry, group = state.get(pid, {}), optimizer.param_groups[group_of[p]]
        fresh, record = "step" not in entry, records_dtypes(optimizer, p)
        if fresh or _passed_warmup(entry["step"], group.get("warmup_steps")):
            layout = warm_layout(optimizer, p, group, settings[group_of[p]])
            widest = torch.promote_types(p.dtype, torch.float32)
            missing = {}
            for k, v in layout.items():
                if k in entry:
                    continue
                if not torch.is_tensor(v):
                    missing[k] = v()  # a value type's zero: 0, 0.0, False
                    continue
                wide = torch.promote_types(v.dtype, widest) if fresh and record and v.is_floating_point() else None
                missing[k] = _zeros(v, p.device, expanded=not fresh, dtype=wide)
            entry = {**missing, **entry} if fresh else {**entry, **missing}
        if record:
            entry = {**entry, DTYPES_KEY: _dtype_record(entry)}
        state[pid] = entry
    return {**sd, "state": state}


@contextmanager
def saving_warm_layout(optimizer):
    """torch's `state_dict()` inside writes the warm-up layout, before the user's post-hooks see it."""
    handle = optimizer.register_state_dict_post_hook(_in_warm_layout, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _is_zero_step(step) -> bool:
    if torch.is_tensor(step):
        return step.numel() == 1 and step.dtype != torch.bool and not step.is_complex() and bool(step == 0)
    return isinstance(step, (int, float)) and not isinstance(step, bool) and step == 0


def _passed_warmup(step, warmup_steps) -> bool:
    """Whether an entry at `step` has passed t == W, where the warm-up state is deleted."""
    try:
        t, w = float(step), float(warmup_steps)
    except (TypeError, ValueError, RuntimeError):
        return False
    return w.is_integer() and 1 <= w <= t


def as_held(optimizer, state_dict):
    """`state_dict` with each entry as the optimizer holds it: one at step 0 keeps only what an unstarted entry
    holds (HinaAdamW's SPD anchor), one past t == W loses its warm-up placeholders. Anything malformed is
    passed on as it is, for `check_state_dict` to name."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        return state_dict
    groups = state_dict.get("param_groups")
    warmup = {}
    if isinstance(groups, list):
        for g in groups:
            if isinstance(g, dict) and isinstance(g.get("params"), list):
                warmup.update(dict.fromkeys(g["params"], g.get("warmup_steps")))
    schema = SCHEMAS.get(type(optimizer).__name__)
    unstarted = schema.unstarted if schema else ()
    state = {}
    for pid, entry in state_dict["state"].items():
        entry = _with_recorded_dtypes(entry)
        if isinstance(entry, dict) and _is_zero_step(entry.get("step")):
            entry = {k: v for k, v in entry.items() if k in unstarted}
        elif isinstance(entry, dict) and _passed_warmup(entry.get("step"), warmup.get(pid)):
            entry = {k: v for k, v in entry.items() if _split(k)[0] not in WARMUP_BASES}
        state[pid] = entry
    return {**state_dict, "state": state}


def _with_recorded_dtypes(entry):
    """`entry` with its float tensors cast to the dtypes it records, the record dropped; as it is if it holds
    no record or a malformed one (which `check_state_dict` then names)."""
    if not isinstance(entry, dict) or not isinstance(entry.get(DTYPES_KEY), str):
        return entry
    dtypes = {}
    for item in filter(None, entry[DTYPES_KEY].split(",")):
        key, _, name = item.partition(":")
        dtype = getattr(torch, name, None)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            return entry
        if torch.is_tensor(entry.get(key)):  # a key saved after the record was taken and then left out: none
            dtypes[key] = dtype
    return {k: v.to(dtypes[k]) if k in dtypes else v for k, v in entry.items() if k != DTYPES_KEY}
