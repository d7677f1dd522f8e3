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

from .automagic_cameamp import Automagic_CameAMP
from .automagic_cameamp_8bit import Automagic_CameAMP8bit
from .automagic_cameamp_8bit_seed004 import Automagic_CameAMP_8Bit
from .automagic_cameamp_coptim import Automagic_CameAMP_COptim, Automagic_CameAMP_COptim8bit
from .automagic_cameamp_improved import Automagic_CameAMP_Improved
from .automagic_cameamp_improved_8bit import Automagic_CameAMP_Improved_8Bit
from .hina_adamw import HinaAdamWOptimizer

OPTIMIZERS = {
    "automagic_cameamp": Automagic_CameAMP,
    "automagic_cameamp8bit": Automagic_CameAMP8bit,
    "automagic_cameamp_8bit": Automagic_CameAMP_8Bit,  # seed 004
    "automagic_cameamp_coptim": Automagic_CameAMP_COptim,
    "automagic_cameamp_coptim8bit": Automagic_CameAMP_COptim8bit,
    "automagic_cameamp_improved": Automagic_CameAMP_Improved,
    "automagic_cameamp_improved_8bit": Automagic_CameAMP_Improved_8Bit,
    "hinaadamwoptimizer": HinaAdamWOptimizer,
    "hinaadamwoptimizer8bit": HinaAdamWOptimizer,
    "customadamw": HinaAdamWOptimizer,
}


def get_optimizer_class(optimizer_type: str, package=None):
    """The class named `optimizer_type`: the reference's, or the same-named class of `package` (`optimized`)."""
    if not isinstance(optimizer_type, str):
        raise TypeError(f"optimizer_type must be a string, got {type(optimizer_type).__name__}")
    key = optimizer_type.rsplit(".", 1)[-1].lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer_type {optimizer_type!r}; known: {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[key]
    return cls if package is None else getattr(package, cls.__name__)


def parse_optimizer_args(optimizer_args) -> dict:
    """kohya's `key=value` strings → kwargs; values are Python literals, as sd-scripts parses them."""
    kwargs = {}
    for item in optimizer_args or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"optimizer_args entries must look like key=value, got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()  # a bare word is a string
    return kwargs


def create_optimizer(optimizer_type: str, params, lr=None, optimizer_args=None, package=None, **kwargs):
    """`cls(params, lr=lr, **optimizer_args, **kwargs)`, as sd-scripts' train_util builds optimizers; `package`:
    see `get_optimizer_class`."""
    cls = get_optimizer_class(optimizer_type, package)
    kwargs = {**parse_optimizer_args(optimizer_args), **kwargs}
    if lr is not None:
        kwargs["lr"] = lr
    return cls(params, **kwargs)
