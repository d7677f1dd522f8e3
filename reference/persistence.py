"""State-dict helpers shared by the family's optimizers."""

from __future__ import annotations

import itertools


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
