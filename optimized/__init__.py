"""Fast, fused implementations of the Automagic_CameAMP family (same names and kwargs as `reference`)."""

from .automagic_cameamp import Automagic_CameAMP
from .automagic_cameamp_8bit import Automagic_CameAMP8bit
from .automagic_cameamp_8bit_seed004 import Automagic_CameAMP_8Bit
from .automagic_cameamp_coptim import Automagic_CameAMP_COptim, Automagic_CameAMP_COptim8bit
from .automagic_cameamp_improved import Automagic_CameAMP_Improved
from .automagic_cameamp_improved_8bit import Automagic_CameAMP_Improved_8Bit, create_improved_8bit_optimizer
from .compile import compile_enabled, set_compile
from .hina_adamw import CustomAdamW, HinaAdamWOptimizer


def create_optimizer(optimizer_type: str, params, lr=None, optimizer_args=None, **kwargs):
    """`reference.create_optimizer` (sd-scripts names and `key=value` args), building the fast classes."""
    import optimized
    from reference.registry import create_optimizer as create

    return create(optimizer_type, params, lr, optimizer_args, package=optimized, **kwargs)


__all__ = [
    "Automagic_CameAMP",
    "Automagic_CameAMP8bit",
    "Automagic_CameAMP_8Bit",
    "Automagic_CameAMP_COptim",
    "Automagic_CameAMP_COptim8bit",
    "Automagic_CameAMP_Improved",
    "Automagic_CameAMP_Improved_8Bit",
    "CustomAdamW",
    "HinaAdamWOptimizer",
    "compile_enabled",
    "create_improved_8bit_optimizer",
    "create_optimizer",
    "set_compile",
]
