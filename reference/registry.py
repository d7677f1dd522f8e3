"""Build the family's optimizers by name, the way kohya sd-scripts does (`--optimizer_type`,
`--optimizer_args key=value ...`), e.g.

    create_optimizer("Automagic_CameAMP8bit", model.parameters(), lr=1e-4,
                     optimizer_args=["warmup_steps=200"])  # compat='fixed' is the default

Names are matched case-insensitively; a dotted path (`library.automagic_cameamp.Automagic_CameAMP`)
is matched by its last component. `HinaAdamWOptimizer8bit` is the sd-scripts name of HinaAdamW, and
`CustomAdamW` the name seed 001 uses [I-42]. Parameters may be `named_parameters()` (or kohya groups
with a `named` list); HinaAdamW uses the names to find LoRA factors.
"""

from __future__ import annotations

import ast
import difflib

from .automagic_cameamp import Automagic_CameAMP
from .automagic_cameamp_8bit import Automagic_CameAMP8bit
from .automagic_cameamp_8bit_seed004 import Automagic_CameAMP_8Bit
from .automagic_cameamp_coptim import Automagic_CameAMP_COptim, Automagic_CameAMP_COptim8bit
from .automagic_cameamp_improved import Automagic_CameAMP_Improved
from .automagic_cameamp_improved_8bit import Automagic_CameAMP_Improved_8Bit
from .hina_adamw import HinaAdamWOptimizer

NAMES = {  # sd-scripts' --optimizer_type spellings; matched case-insensitively
    "Automagic_CameAMP": Automagic_CameAMP,
    "Automagic_CameAMP8bit": Automagic_CameAMP8bit,
    "Automagic_CameAMP_8Bit": Automagic_CameAMP_8Bit,  # seed 004
    "Automagic_CameAMP_COptim": Automagic_CameAMP_COptim,
    "Automagic_CameAMP_COptim8bit": Automagic_CameAMP_COptim8bit,
    "Automagic_CameAMP_Improved": Automagic_CameAMP_Improved,
    "Automagic_CameAMP_Improved_8Bit": Automagic_CameAMP_Improved_8Bit,
    "HinaAdamWOptimizer": HinaAdamWOptimizer,
    "HinaAdamWOptimizer8bit": HinaAdamWOptimizer,
    "CustomAdamW": HinaAdamWOptimizer,
}
OPTIMIZERS = {name.lower(): cls for name, cls in NAMES.items()}
SPELLING = {name.lower(): name for name in NAMES}


def get_optimizer_class(optimizer_type: str, package=None):
    """The class named `optimizer_type`: the reference's, or the same-named class of `package` (`optimized`).
    A near miss (`Automagic_CameAMP_8bit` for `Automagic_CameAMP8bit`) is refused with the close names."""
    if not isinstance(optimizer_type, str):
        raise TypeError(f"optimizer_type must be a string, got {type(optimizer_type).__name__}")
    key = optimizer_type.rsplit(".", 1)[-1].lower()
    if key not in OPTIMIZERS:
        near = difflib.get_close_matches(key, OPTIMIZERS, n=3, cutoff=0.7)
        hint = "; did you mean " + " or ".join(SPELLING[k] for k in near) + "?" if near else ""
        raise ValueError(f"unknown optimizer_type {optimizer_type!r}{hint} (known: {list(NAMES)}; the README's "
                         "table 'Which class' says which is which)")  # fmt: skip
    cls = OPTIMIZERS[key]
    return cls if package is None else getattr(package, cls.__name__)


def parse_optimizer_args(optimizer_args) -> dict:
    """kohya's `key=value` strings → kwargs, exactly as sd-scripts' train_util parses them: one `=` per entry,
    the key as written, the value through `ast.literal_eval` (so `came=False`, `compat='fixed'`; a bare word such
    as `false` or `fixed` raises as it does there)."""
    if optimizer_args is None:
        return {}
    if isinstance(optimizer_args, (str, bytes)) or not isinstance(optimizer_args, (list, tuple)):
        raise TypeError(f"optimizer_args must be a list of 'key=value' strings, got {type(optimizer_args).__name__}"
                        f" {optimizer_args!r}")  # fmt: skip
    kwargs = {}
    for item in optimizer_args:
        if not isinstance(item, str):
            raise TypeError(f"optimizer_args entries must be 'key=value' strings, got {item!r}")
        parts = item.split("=")
        if len(parts) != 2:
            raise ValueError(f"optimizer_args entries must be key=value with one '=', got {item!r}")
        key, value = parts
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:  # the exception sd-scripts raises, saying which entry
            raise type(error)(
                f"optimizer_args {item!r}: the value must be a Python literal, as sd-scripts "
                f"reads it with ast.literal_eval (a string needs quotes: {key}='{value}')"
            ) from error
    return kwargs


def create_optimizer(optimizer_type: str, params, lr=None, optimizer_args=None, package=None, **kwargs):
    """`cls(params, lr=lr, **optimizer_args, **kwargs)`, as sd-scripts' train_util builds optimizers (an `lr` given
    twice raises, as there); `package`: see `get_optimizer_class`."""
    cls = get_optimizer_class(optimizer_type, package)
    parsed = parse_optimizer_args(optimizer_args)
    given = {**({} if lr is None else {"lr": lr}), **kwargs}
    twice = sorted(set(parsed) & set(given))
    if twice:
        raise TypeError(f"{cls.__name__} got {twice} both in optimizer_args and as keyword arguments")
    return cls(params, **parsed, **given)
