"""State-dict helpers shared by the family's optimizers."""

from __future__ import annotations

import io
import itertools

import torch


def saved_param_map(optimizer, state_dict):
    """Map the saved parameter ids to the optimizer's parameters, in the order torch uses."""
    saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = itertools.chain.from_iterable(g["params"] for g in optimizer.param_groups)
    return dict(zip(saved_ids, params, strict=True))


def restore_state_dtypes(optimizer, state_dict):
    """Undo torch's cast of floating states to the parameter dtype after `load_state_dict`.

    torch casts every floating state tensor to its parameter's dtype on load. The family keeps some
    states in another dtype (the fp32 LR mask of a bf16 parameter, fp32 states in fixed mode), so a
    round trip must restore the saved dtype exactly.
    """
    id_map = saved_param_map(optimizer, state_dict)
    for pid, saved in state_dict["state"].items():
        if pid not in id_map:  # an entry that is not a parameter's: torch keeps it as it is
            continue
        p = id_map[pid]
        for key, value in saved.items():
            if hasattr(value, "dtype") and optimizer.state[p][key].dtype != value.dtype:
                optimizer.state[p][key] = value.to(device=p.device, copy=True)


class Copyable:
    """deepcopy and pickle keep the whole optimizer. torch's `Optimizer.__getstate__` keeps only `defaults`,
    `state` and `param_groups`; this family's settings (compat, nonfinite, …) and the fast path's buffers are
    attributes too, so a copy without them could not step. Hooks are left out, as torch leaves them out."""

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if not key.endswith("_hooks")}


WIDE_STATE = "optimizer_state"  # in the first param group of a state dict


def save_wide_state(sd: dict, key: str, value) -> None:
    """Put optimizer-wide state (no parameter's: a generator, C-Optim's histories) into the first param group of
    `sd`, as `sd["param_groups"][0]["optimizer_state"][key]`, serialised by torch.save. torch.distributed.checkpoint
    keeps only a state dict's `state` and `param_groups`, so a top-level key was lost on every DCP save, and it
    loads into the resuming optimizer's own state dict, which a history of another length does not fit; one
    bytes value is carried whole (issue 26)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    groups = list(sd["param_groups"])
    groups[0] = {**groups[0], WIDE_STATE: {**groups[0].get(WIDE_STATE, {}), key: buffer.getvalue()}}
    sd["param_groups"] = groups


def pop_wide_state(state_dict, key: str):
    """(`state_dict` without `key`'s optimizer-wide value, the value or None). A state dict saved before the value
    moved into the first param group holds it, unserialised, at the top level. A malformed state dict is passed
    on as it is."""
    if not isinstance(state_dict, dict):
        return state_dict, None
    rest = {k: v for k, v in state_dict.items() if k != key}
    value = state_dict.get(key)
    groups = state_dict.get("param_groups")
    first = groups[0] if isinstance(groups, list) and groups else None
    if isinstance(first, dict) and isinstance(first.get(WIDE_STATE), dict):
        wide = dict(first[WIDE_STATE])
        value = wide.pop(key, value)
        first = {k: v for k, v in first.items() if k != WIDE_STATE}
        if wide:
            first[WIDE_STATE] = wide
        rest["param_groups"] = [first, *groups[1:]]
    if isinstance(value, bytes):
        try:
            value = torch.load(io.BytesIO(value), weights_only=True)
        except Exception as error:  # torch.load's own message does not say which value
            message = f"state_dict's {WIDE_STATE}[{key!r}] cannot be read ({type(error).__name__})"
            raise ValueError(f"{message}; the optimizer is unchanged") from None
    return rest, value
