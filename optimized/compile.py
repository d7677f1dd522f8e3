"""torch.compile with one switch: `CAMEAMP_COMPILE=0` (or `set_compile(False)`) runs the same code eagerly."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings

import torch
import torch.utils._pytree

_enabled = os.environ.get("CAMEAMP_COMPILE", "1") != "0"

# Each combination of static phase flags is one graph. One training run sees about four, but a
# process that builds optimizers with many configurations (the test suite) sees more than dynamo's
# default limit of 8 per function. Set only while one of our passes runs (`_scoped`).
GRAPH_VARIANT_LIMIT = 256


# No bounds check per gathered element: the indices are 8-bit codes into the 256-entry code, bins
# clamped to the 2^16-entry table (codec.quantize), and the rows' own tensor and block ids.
INDUCTOR_OPTIONS = {"assert_indirect_indexing": False}

# Passes over 8-bit states: recompute rather than store. A state is re-quantised with its block's
# absmax, a reduction of the new values, so a pass reads each new value twice (for the absmax, then
# for the codes). Inductor's default materialises those values as fp32 buffers, 12-16 bytes/param
# during the step; these limits make it recompute them from the codes (0.1 byte/param measured), at
# about 1.6x the compile time, so fp32 passes keep the defaults.
RECOMPUTE_OPTIONS = {**INDUCTOR_OPTIONS, "realize_opcount_threshold": 100_000, "realize_reads_threshold": 100_000,
                     "realize_acc_reads_threshold": 100_000}  # fmt: skip


def _byte_load_line(original):
    """Inductor's AVX2 code loads 8 uint8/int8 values (one float vector's worth) with
    `Vectorized<uint8_t>::loadu(ptr, 8)`, which goes through a stack copy and stalls on store
    forwarding: reading an 8-bit state then costs 4x reading an fp32 one. ATen's `loadu_one_fourth`
    loads the same 8 bytes with one instruction (AVX-512's `loadu` already takes that path); the
    conversions that follow use only those 8 lanes."""
    slow = ", static_cast<int64_t>(8))"

    def load_line(self, var, index, dtype, load_mask=None):
        line = original(self, var, index, dtype, load_mask)
        if load_mask is None and dtype in (torch.uint8, torch.int8) and line.endswith(slow) and "::loadu(" in line:
            line = line[: -len(slow)].replace("::loadu(", "::loadu_one_fourth(", 1) + ")"
        return line

    return load_line


def _no_outer_loop_fusion(self, node1, node2):
    """`compiled(..., outer_loop_fusion=False)`: no CPU outer-loop fusion (a per-row reduction fused with its
    consumers over a shared outer loop): on Automagic_CameAMP_Improved's early-phase graph of 2-D stacks,
    torch 2.13's local-buffer analysis of such a fusion raises KeyError inside inductor."""
    return False


@functools.cache
def _codegen_classes():
    """Inductor's CPU code generator classes, or None where this torch has none."""
    try:
        from torch._inductor.codegen import cpp
    except ImportError:
        return None
    kernel, scheduling = cpp.CppVecKernel, cpp.CppScheduling
    if not (hasattr(kernel, "_get_vec_load_line") and hasattr(scheduling, "can_fuse_vertical_outer_loop")):
        return None
    return kernel, scheduling


def fast_byte_loads() -> bool:
    """Whether `_scoped` can give 8-bit loads the one-instruction path (asked when compiling: importing
    inductor's code generator takes ~1.4 s, which importing `optimized` does not pay)."""
    return _codegen_classes() is not None


@contextlib.contextmanager
def _scoped(outer_loop_fusion: bool):
    """Our inductor code-generation changes and dynamo's recompile limit, only while one of our passes runs
    (and compiles): importing `optimized` changes nothing for the user's own torch.compile."""
    classes = _codegen_classes()
    saved_limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(saved_limit, GRAPH_VARIANT_LIMIT)
    if classes is not None:
        kernel, scheduling = classes
        load_line, fuse = kernel._get_vec_load_line, scheduling.can_fuse_vertical_outer_loop
        kernel._get_vec_load_line = _byte_load_line(load_line)
        if not outer_loop_fusion:
            scheduling.can_fuse_vertical_outer_loop = _no_outer_loop_fusion
    try:
        yield
    finally:
        torch._dynamo.config.recompile_limit = saved_limit
        if classes is not None:
            kernel._get_vec_load_line, scheduling.can_fuse_vertical_outer_loop = load_line, fuse


def _reads_8bit_state(args) -> bool:
    """Whether a pass gets an automagic_step.Buffers whose states are blockwise 8-bit."""
    return any(getattr(a, "blocks", None) is not None for a in args)


def _width_static(args) -> None:
    """Mark dim 1 of every 2-D tensor in `args` static: a flat bucket's row width. Else a process that steps
    buckets of both widths would recompile the first graph with a symbolic width, which every later call of
    either width would then take (element-wise loops over an unknown row length). A tensor keeps its mark, so
    the persistent buffers are marked once (mark_static costs ~40 µs a tensor)."""
    for t in torch.utils._pytree.tree_leaves(args):
        if isinstance(t, torch.Tensor) and t.dim() == 2 and 1 not in getattr(t, "_dynamo_static_indices", ()):
            torch._dynamo.mark_static(t, 1)


def set_compile(enabled: bool) -> None:
    """Turn compilation of the fused steps on or off (takes effect at the next call)."""
    global _enabled
    _enabled = bool(enabled)


def compile_enabled() -> bool:
    return _enabled


@functools.cache
def _have_cxx() -> bool:
    """Inductor's CPU backend needs a C++ compiler; CUDA graphs are compiled by Triton instead."""
    return torch.cuda.is_available() or any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++"))


def compiled(fn, stores_states: bool = True, exact_casts: bool = False, outer_loop_fusion: bool = True,
             dynamic: bool | None = None):  # fmt: skip
    """Compile `fn` on first use; `stores_states=False`: it never writes a state, so it needs no recompute
    limits even over 8-bit states. `exact_casts=True`: a round trip such as `x.to(bf16).float()` rounds, as
    it does uncompiled (inductor drops it by default). `outer_loop_fusion=False`: see
    `_no_outer_loop_fusion`.

    Shapes are 'automatic dynamic' by default: a dimension that changes between calls (the number of rows
    of a bucket, the number of tensors) becomes symbolic after one recompile, while the row width (dim 1 of
    every 2-D input, `_width_static`) stays a constant, 256 or 32, which lets inductor fuse every element-wise
    loop of a pass; each width gets its own graphs. `dynamic=True` makes every dimension symbolic from the first
    compile (for steps over tensors of many shapes)."""
    cache = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _enabled:
            return fn(*args, **kwargs)
        if not _have_cxx():
            warnings.warn("no C++ compiler found: the fused step runs uncompiled (same results, slower)",
                          stacklevel=2)  # fmt: skip
            set_compile(False)
            return fn(*args, **kwargs)
        if dynamic is not True:
            _width_static(args)
        recompute = stores_states and _reads_8bit_state(args)
        if recompute not in cache:
            options = RECOMPUTE_OPTIONS if recompute else INDUCTOR_OPTIONS
            if exact_casts:
                options = {**options, "emulate_precision_casts": True}
            cache[recompute] = torch.compile(fn, dynamic=dynamic, fullgraph=True, options=options)
        with _scoped(outer_loop_fusion):
            return cache[recompute](*args, **kwargs)

    return wrapper
