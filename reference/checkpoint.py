"""Checking a state_dict before `load_state_dict` changes anything (issue 24).

torch's own `load_state_dict` checks only the number of groups and of parameters per group; a checkpoint of
another class, of a model with other shapes, with a state entry removed, a truncated tensor or a `step` that
is not a number was accepted, and the run then crashed or went on wrongly. `check_state_dict` compares the
checkpoint with what this class writes (`SCHEMAS`, in the reference's format, which both packages share) and
raises a `ValueError` naming the first thing that does not match, before any state is touched.

A state key is named by its base (`exp_avg`) or by its 8-bit forms: `<base>_q` with `<base>_q_scale`
(blockwise dynamic codes) or `<base>_scale` and `<base>_zero` (seed 004's min/max codes), plus seed 004's
error accumulator `<base>_err`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

CODE_SUFFIXES = ("_q",)  # codes: the parameter's shape, uint8
SCALE_SUFFIXES = ("_q_scale", "_scale", "_zero")  # per-block floats, 1-D
ERROR_SUFFIXES = ("_err",)  # seed 004's error accumulator: a float tensor shaped like the base


class Schema(NamedTuple):
    """The state one class writes per parameter.

    `required`: bases every started entry holds; `when`: those also required where a group setting is true
    (v with came=True); `optional`: bases some modes or phases write; `shapes`: bases not shaped like the
    parameter, with the forms they may take ("scalar": one element; "rows": one value per row, [rows, 1] or the
    parameter's shape with a last dimension of 1)."""

    required: tuple
    optional: tuple = ()
    when: Mapping = {}  # group setting → bases required when it is true
    pattern: str | None = None  # further optional bases, as a regular expression
    shapes: Mapping = {}
    quantized: bool = False  # whether 8-bit forms of the bases may appear
    unstarted: tuple = ()  # bases an entry may hold alone, before the parameter's first step (HinaAdamW's SPD anchor)


INTEGERS = ("step", "edge_case_count")
INTEGER_PATTERN = re.compile(r"momentum_count_\d+")
NUMBERS = ("lr_max", "avg_lr", "exp_avg_res_weight", "contextual_lr_multiplier")
BOOLEANS = ("use_8bit",)
BOOL_TENSORS = ("last_polarity",)

_AUTOMAGIC = Schema(
    required=("step", "lr_max", "avg_lr", "lr_mask", "exp_avg", "exp_avg_res"),
    optional=("s", "last_polarity", "row_scaling"),
    when={"came": ("exp_avg_sq",)},
    shapes={"s": ("param", "scalar"), "row_scaling": ("rows",)},
)
_COPTIM = _AUTOMAGIC._replace(
    required=(*_AUTOMAGIC.required, "edge_case_count", "contextual_lr_multiplier"),
    pattern=r"momentum_(scale|count)_\d+",
)
_IMPROVED_FAMILY = {"s": ("param", "scalar"), "spatial_variance": ("param", "scalar")}
SCHEMAS = {
    "Automagic_CameAMP": _AUTOMAGIC,
    "Automagic_CameAMP8bit": _AUTOMAGIC._replace(quantized=True),
    "Automagic_CameAMP_COptim": _COPTIM,
    "Automagic_CameAMP_COptim8bit": _COPTIM._replace(quantized=True),
    "Automagic_CameAMP_Improved": Schema(
        required=("step", "lr_max", "avg_lr", "lr_mask", "exp_avg", "exp_avg_res"),
        optional=("s", "last_polarity", "exp_avg_res_weight", "pre", "edge_history", "spatial_variance"),
        when={"came": ("exp_avg_sq",), "enable_dual_momentum": ("long_term_momentum", "mixed_momentum_sq")},
        shapes=_IMPROVED_FAMILY,
    ),
    "Automagic_CameAMP_8Bit": Schema(
        required=("step", "lr_max", "avg_lr", "lr_mask", "exp_avg", "exp_avg_res"),
        optional=("s", "last_polarity", "exp_avg_res_weight", "pre", "exp_avg_sq", "edge_history", "spatial_variance"),
        shapes=_IMPROVED_FAMILY,
        quantized=True,
    ),
    "Automagic_CameAMP_Improved_8Bit": Schema(
        required=("step", "use_8bit", "lr_mask", "exp_avg"),
        optional=("s", "last_polarity", "exp_avg_sq", "exp_avg_res", "spatial_variance"),
        shapes={**_IMPROVED_FAMILY, "lr_mask": ("param", "rows")},
        quantized=True,
    ),
    "HinaAdamWOptimizer": Schema(
        required=("step", "exp_avg", "exp_avg_sq", "momentum_alignment"),
        optional=("spd_anchor", "max_exp_avg_sq", "exp_avg_sq_prev"),  # the last: upstream's dead v̄
        shapes={"momentum_alignment": ("scalar",)},
        quantized=True,
        unstarted=("spd_anchor",),
    ),
}


def _fail(message: str):
    raise ValueError(f"{message}; the optimizer is unchanged")


def _split(key: str) -> tuple[str, str]:
    """`exp_avg_q_scale` → (`exp_avg`, `_q_scale`); a plain key → (key, "")."""
    for suffix in (*SCALE_SUFFIXES, *CODE_SUFFIXES, *ERROR_SUFFIXES):
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def _is_integer(value) -> bool:
    if torch.is_tensor(value):
        return (
            value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool and bool(value == value.round())
        )
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    if torch.is_tensor(value):
        return value.numel() == 1 and (value.is_floating_point() or _is_integer(value))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(where: str, key: str, value, p: torch.Tensor, schema: Schema, known) -> None:
    base, suffix = _split(key)
    if base in INTEGERS or INTEGER_PATTERN.fullmatch(base):
        if suffix or not _is_integer(value):
            _fail(f"{where}[{key!r}] must be an integer, got {type(value).__name__} {value!r:.40}")
        return
    if base in NUMBERS:
        if suffix or not _is_number(value):
            _fail(f"{where}[{key!r}] must be a real number, got {type(value).__name__} {value!r:.40}")
        return
    if base in BOOLEANS:
        if suffix or not isinstance(value, bool):
            _fail(f"{where}[{key!r}] must be a bool, got {type(value).__name__}")
        return
    if not known(base) or (suffix and not schema.quantized):
        _fail(f"{where} holds {key!r}, which this optimizer does not write (a checkpoint of another optimizer?)")
    forms = schema.shapes.get(base, ("param",))
    if "scalar" in forms and _is_number(value) and not torch.is_tensor(value):
        return
    if not torch.is_tensor(value):
        _fail(f"{where}[{key!r}] must be a tensor, got {type(value).__name__}")
    if suffix in SCALE_SUFFIXES:
        if value.dim() != 1 or value.numel() == 0 or not value.is_floating_point():
            _fail(
                f"{where}[{key!r}] must be a 1-D float tensor of block scales, got {value.dtype} {tuple(value.shape)}"
            )
        return
    if suffix in CODE_SUFFIXES and value.dtype != torch.uint8:
        _fail(f"{where}[{key!r}] must be uint8 codes, got {value.dtype}")
    if suffix not in CODE_SUFFIXES:
        if base in BOOL_TENSORS and value.dtype != torch.bool:
            _fail(f"{where}[{key!r}] must be a bool tensor, got {value.dtype}")
        if base not in BOOL_TENSORS and not value.is_floating_point():
            _fail(f"{where}[{key!r}] must be a float tensor, got {value.dtype}")
    shape, want = tuple(value.shape), tuple(p.shape)
    allowed = (
        ("param" in forms and shape == want)
        or ("scalar" in forms and value.numel() == 1)
        or ("rows" in forms and p.dim() >= 1 and shape in ((want[0], 1), (*want[:-1], 1)))
        or (p.dim() == 0 and value.numel() == 1)  # 0-d parameters: some states are kept as [1]
    )
    if not allowed:
        _fail(f"{where}[{key!r}] has shape {shape}, the parameter {want}")


def _check_entry(where: str, entry, p: torch.Tensor, group: Mapping, schema: Schema) -> None:
    if not isinstance(entry, Mapping):
        _fail(f"{where} must be a dict, got {type(entry).__name__}")
    bases = {_split(k)[0] for k in entry}
    extra = re.compile(schema.pattern) if schema.pattern else None

    def known(base: str) -> bool:
        conditional = (b for bases in schema.when.values() for b in bases)
        return base in (*schema.required, *schema.optional, *conditional) or bool(extra and extra.fullmatch(base))

    for key, value in entry.items():
        if not isinstance(key, str):
            _fail(f"{where} has a key {key!r} that is not a string")
        _check_value(where, key, value, p, schema, known)
    for key in entry:  # an 8-bit code needs its scales
        base, suffix = _split(key)
        if suffix in CODE_SUFFIXES and f"{key}_scale" not in entry and f"{base}_scale" not in entry:
            _fail(f"{where} holds {key!r} without {key + '_scale'!r}")
    if bases <= set(schema.unstarted):
        return
    required = [*schema.required, *(b for key, bases in schema.when.items() if group.get(key) for b in bases)]
    missing = [base for base in required if base not in bases]
    if missing:
        _fail(f"{where} lacks {missing} (a truncated checkpoint, or one of another optimizer?)")


def check_entry(optimizer, where: str, entry, p: torch.Tensor, group: Mapping) -> None:
    """Raise a ValueError unless `entry` is a state entry this class writes for `p` in `group`."""
    schema = SCHEMAS.get(type(optimizer).__name__)
    if schema is not None:
        _check_entry(where, entry, p, group, schema)


def check_states(optimizer, skip=frozenset()) -> None:
    """Raise a ValueError unless the state entry of every parameter with a gradient (but those whose id is in
    `skip`) is one this class writes: a value assigned into `optimizer.state` by hand with another shape or
    dtype is refused before any parameter moves, not by a shape error halfway through the step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = optimizer.state.get(p)
            if p.grad is not None and entry and id(p) not in skip:
                check_entry(optimizer, "optimizer.state", entry, p, group)


def check_class(optimizer, state_dict) -> None:
    """Raise a ValueError unless `state_dict` is a dict that is `optimizer`'s class's, when it names one."""
    if not isinstance(state_dict, Mapping):
        _fail(f"expected a dict, got {type(state_dict).__name__}")
    name, saved_name = type(optimizer).__name__, state_dict.get("optimizer")
    if saved_name is not None and saved_name != name:
        _fail(f"the checkpoint is of {saved_name}, this optimizer is {name}")


def check_state_dict(optimizer, state_dict) -> None:
    """Raise a ValueError unless `state_dict` is one `optimizer` can load: same class (when the checkpoint says),
    the same number of groups and parameters, and every state entry shaped and typed as this class writes it."""
    check_class(optimizer, state_dict)
    for key in ("state", "param_groups"):
        if key not in state_dict:
            _fail(f"the state_dict has no {key!r}")
    groups, saved_groups = optimizer.param_groups, state_dict["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or not all(
        isinstance(g, Mapping) and "params" in g for g in saved_groups
    ):
        _fail("param_groups must be a list of dicts with 'params'")
    if len(saved_groups) != len(groups):
        _fail(f"the checkpoint has {len(saved_groups)} param groups, this optimizer {len(groups)}")
    params = {}
    for gi, (group, saved) in enumerate(zip(groups, saved_groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            _fail(
                f"param group {gi} has {len(saved['params'])} parameters in the checkpoint, {len(group['params'])} here"
            )
        params.update({pid: (p, group) for pid, p in zip(saved["params"], group["params"], strict=True)})
    state = state_dict["state"]
    if not isinstance(state, Mapping):
        _fail(f"state must be a dict, got {type(state).__name__}")
    for pid, entry in state.items():
        if not isinstance(pid, int) or isinstance(pid, bool):
            continue  # not a parameter's entry: torch's load keeps such entries as they are
        if pid not in params:
            _fail(f"state has an entry for parameter {pid!r}, which no param group lists")
        p, group = params[pid]
        check_entry(optimizer, f"state[{pid!r}]", entry, p, group)
    for gi, saved in enumerate(saved_groups):  # last: a checkpoint of another class is named as such first
        optimizer._check_group_settings(saved, gi)
