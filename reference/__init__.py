"""Readable, paper-by-paper reference implementations of the Automagic_CameAMP family.

Each technique module implements one technique and cites its source; the optimizer classes compose
them. `registry.create_optimizer` builds any of them by its sd-scripts name.
"""

from .automagic_cameamp import Automagic_CameAMP
from .automagic_cameamp_8bit import Automagic_CameAMP8bit
from .automagic_cameamp_8bit_seed004 import Automagic_CameAMP_8Bit
from .automagic_cameamp_coptim import Automagic_CameAMP_COptim, Automagic_CameAMP_COptim8bit
from .automagic_cameamp_improved import Automagic_CameAMP_Improved
from .automagic_cameamp_improved_8bit import Automagic_CameAMP_Improved_8Bit, create_improved_8bit_optimizer
from .contextual_lr import ContextualOptimizationModule
from .hina_adamw import CustomAdamW, HinaAdamWOptimizer
from .registry import create_optimizer, get_optimizer_class

__all__ = [
    "Automagic_CameAMP",
    "Automagic_CameAMP8bit",
    "Automagic_CameAMP_8Bit",
    "Automagic_CameAMP_COptim",
    "Automagic_CameAMP_COptim8bit",
    "Automagic_CameAMP_Improved",
    "Automagic_CameAMP_Improved_8Bit",
    "ContextualOptimizationModule",
    "CustomAdamW",
    "HinaAdamWOptimizer",
    "create_improved_8bit_optimizer",
    "create_optimizer",
    "get_optimizer_class",
]
