"""Readable, paper-by-paper reference implementations of the Automagic_CameAMP family.

Each module implements one technique and cites its source; `Automagic_CameAMP` composes them.
"""

from .automagic_cameamp import Automagic_CameAMP

__all__ = ["Automagic_CameAMP"]
