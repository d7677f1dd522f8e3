"""Fast, fused implementations of the Automagic_CameAMP family (same names and kwargs as `reference`)."""

from .automagic_cameamp import Automagic_CameAMP
from .compile import compile_enabled, set_compile

__all__ = ["Automagic_CameAMP", "compile_enabled", "set_compile"]
