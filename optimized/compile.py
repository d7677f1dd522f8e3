"""torch.compile with one switch: `CAMEAMP_COMPILE=0` (or `set_compile(False)`) runs the same code eagerly."""

from __future__ import annotations

import functools
import os
import shutil
import warnings

import torch

_enabled = os.environ.get("CAMEAMP_COMPILE", "1") != "0"

# Each combination of static phase flags is one graph. One training run sees about four, but a
# process that builds optimizers with many configurations (the test suite) sees more than dynamo's
# default limit of 8 per function. Shapes never recompile (dynamic=True).
GRAPH_VARIANT_LIMIT = 256
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, GRAPH_VARIANT_LIMIT)


def set_compile(enabled: bool) -> None:
    """Turn compilation of the fused steps on or off (takes effect at the next call)."""
    global _enabled
    _enabled = bool(enabled)


def compile_enabled() -> bool:
    return _enabled


def _have_cxx() -> bool:
    """Inductor's CPU backend needs a C++ compiler; CUDA graphs are compiled by Triton instead."""
    return torch.cuda.is_available() or any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++"))


def compiled(fn):
    """Compile `fn` on first use. Shapes are 'automatic dynamic': a dimension that changes between calls
    (the number of rows of a bucket, the number of tensors) becomes symbolic after one recompile, while
    the chunk width stays a constant 256, which lets inductor fuse every element-wise loop of a pass."""
    cache = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _enabled:
            return fn(*args, **kwargs)
        if "fn" not in cache:
            if not _have_cxx():
                warnings.warn("no C++ compiler found: the fused step runs uncompiled (same results, slower)",
                              stacklevel=2)  # fmt: skip
                set_compile(False)
                return fn(*args, **kwargs)
            cache["fn"] = torch.compile(fn, dynamic=None, fullgraph=True)
        return cache["fn"](*args, **kwargs)

    return wrapper
