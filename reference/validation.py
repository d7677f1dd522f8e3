"""Argument and gradient checks shared by the family's optimizers."""

from __future__ import annotations

import contextlib
import numbers
import warnings

import torch

COMPAT_MODES = ("upstream", "fixed")
NONFINITE_POLICIES = ("raise", "skip")  # what a step does when a gradient holds NaN or Inf
WD_WINDOWS = ("warmup_half", "always")


def refuse_tensor(name, value) -> None:
    """A Tensor hyper-parameter is not supported (torch's optimizers without `capturable` refuse one too)."""
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{name} as a Tensor is not supported: pass a Python number ({name}={name}.item())")


def _number(name, value, *, low=None, high=None, low_open=False, high_open=True):
    refuse_tensor(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")


def check_bool(name, value) -> None:
    """A switch must be a bool: a string such as 'yes' or 'false' would pass an `if` and mean True."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _tuple(name, value, length):
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise ValueError(f"{name} must be a sequence of {length} numbers, got {value!r}")


def check_automagic_kwargs(d: dict, *, compat: str, wd_until: str) -> None:
    """Validate the Automagic_CameAMP constructor arguments (clear errors naming the argument)."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    if wd_until not in WD_WINDOWS:
        raise ValueError(f"wd_until must be one of {WD_WINDOWS}, got {wd_until!r}")
    if wd_until != "warmup_half" and compat != "fixed":
        raise ValueError("wd_until='always' is a correction [I-48]; it needs compat='fixed'")
    for name in ("came", "full_finetune"):
        check_bool(name, d[name])
    for name in ("lr", "min_lr", "max_lr", "lr_bump", "weight_decay"):
        _number(name, d[name], low=0.0, high=None)
    if d["min_lr"] > d["max_lr"]:
        raise ValueError(f"min_lr ({d['min_lr']}) must not exceed max_lr ({d['max_lr']})")
    _number("clip_threshold", d["clip_threshold"], low=0.0, low_open=True)
    _number("eta", d["eta"])
    if d["eta"] == 0:
        raise ValueError("eta must be non-zero (ALLoRA uses 1/eta**2)")
    if "beta1_decay" in d:  # Improved_8Bit has none
        _number("beta1_decay", d["beta1_decay"], low=0.0, high=1.0, high_open=False)
    _tuple("betas", d["betas"], 3)
    for i, b in enumerate(d["betas"]):
        _number(f"betas[{i}]", b, low=0.0, high=1.0)
    _tuple("eps", d["eps"], 3)
    for i, e in enumerate(d["eps"]):  # ε = 0 divides an exactly-zero gradient element by 0
        _number(f"eps[{i}]", e, low=0.0, low_open=True)
    w = d["warmup_steps"]
    if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {w!r}")


@contextlib.contextmanager
def naming_group(index: int):
    """A ValueError or TypeError raised inside names the param group it is about."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise type(error)(f"param group {index}: {error}") from None


def check_distinct_params(param_group: dict) -> None:
    """The same tensor twice in one group would be stepped twice (torch only warns); refuse it. An iterator of
    parameters is listed first, so that torch's add_param_group still sees them (it refuses sets itself)."""
    params = param_group["params"]
    if isinstance(params, (torch.Tensor, set)):
        return
    param_group["params"] = params = list(params)
    if len({id(p) for p in params}) != len(params):
        raise ValueError("a param group holds the same parameter more than once")


def check_grads(param_groups, owner: str) -> None:
    """`check_grad` for every gradient of every group: a step refuses before any group has moved."""
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None:
                check_grad(p, owner)


def check_grad(p: torch.Tensor, owner: str) -> None:
    """Refuse gradients the family cannot handle, before any state is touched."""
    if p.grad.shape != p.shape:
        raise ValueError(f"{owner}: a gradient of shape {tuple(p.grad.shape)} for a parameter of shape "
                         f"{tuple(p.shape)}")  # fmt: skip
    if p.grad.is_sparse:
        raise TypeError(f"{owner} does not support sparse gradients")
    if p.is_complex() or p.grad.is_complex():
        raise TypeError(f"{owner} does not support complex parameters; view them as real")
    if not p.is_floating_point():
        raise TypeError(f"{owner} needs floating-point parameters, got {p.dtype}")


IMPROVED_FLAGS = (
    "came", "full_finetune", "verbose", "edge_suppression", "background_regularization", "spatial_awareness",
    "lora_rank_penalty", "enable_cache", "use_approximate_svd", "enable_dual_momentum", "block_wise", "stable_emb",
    "fused_adam", "force_8bit",
)  # fmt: skip


def check_improved_kwargs(d: dict) -> None:
    """The Improved classes' settings beyond the Automagic table."""
    for name in IMPROVED_FLAGS:
        if name in d:
            check_bool(name, d[name])
    for name in ("d_coef", "edge_threshold", "edge_penalty", "frequency_penalty", "detail_preservation",
                 "rank_penalty_strength"):  # fmt: skip
        if name in d:
            _number(name, d[name], low=0.0)
    if "low_rank_emphasis" in d:
        _number("low_rank_emphasis", d["low_rank_emphasis"], low=0.0, low_open=True)
    if "long_term_beta" in d:
        _number("long_term_beta", d["long_term_beta"], low=0.0, high=1.0)
    if d.get("alpha_mix_ratio") is not None:
        _number("alpha_mix_ratio", d["alpha_mix_ratio"], low=0.0)
    size = d.get("max_cache_size", 0)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise ValueError(f"max_cache_size must be a non-negative integer, got {size!r}")


def check_8bit_kwargs(d: dict) -> None:
    """Seed 004's quantisation settings."""
    for name in ("quantize_states", "error_correction", "mixed_precision", "adaptive_block_size"):
        check_bool(name, d[name])
    for name, low in (("block_size", 2), ("sync_frequency", 0)):
        _integer(name, d[name], low)


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_improved_8bit_kwargs(d: dict) -> None:
    """Improved_8Bit's settings beyond the Improved keys (spec O7)."""
    _number("adaptation_rate", d["adaptation_rate"], low=0.0, high=1.0, high_open=False)
    if d["optim_bits"] not in (8, 32):
        raise ValueError(f"optim_bits must be 8 or 32, got {d['optim_bits']!r}")
    _integer("percentile_clipping", d["percentile_clipping"], 1)
    _integer("min_8bit_size", d["min_8bit_size"], 0)
    _integer("seed", d["seed"], 0)


PAPER_UNIT_INTERVAL = ("momentum", "decay_rate", "beta1", "beta2", "beta3")


def check_paper_kwargs(d: dict) -> None:
    """The papers' optimizers: lr, weight_decay, eps ≥ 0; betas and rates in [0, 1); clip_threshold > 0."""
    for name in ("lr", "weight_decay"):
        if d.get(name) is not None:
            _number(name, d[name], low=0.0, high=None)
    eps = d.get("eps")
    if eps is not None:
        for i, e in enumerate(eps if isinstance(eps, (tuple, list)) else (eps,)):
            _number(f"eps[{i}]" if isinstance(eps, (tuple, list)) else "eps", e, low=0.0, high=None)
    if "betas" in d:
        if not isinstance(d["betas"], (tuple, list)):
            raise ValueError(f"betas must be a sequence of numbers, got {d['betas']!r}")
        for i, b in enumerate(d["betas"]):
            _number(f"betas[{i}]", b, low=0.0, high=1.0)
    for name in PAPER_UNIT_INTERVAL:
        if name in d:
            _number(name, d[name], low=0.0, high=1.0)
    if "clip_threshold" in d:
        _number("clip_threshold", d["clip_threshold"], low=0.0, low_open=True, high=None)


def check_nonfinite_policy(value) -> None:
    if value not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {value!r}")


def gradients_are_finite(param_groups) -> bool:
    """Whether every gradient is free of NaN and Inf: one host synchronisation for the whole step."""
    flags = [torch.isfinite(p.grad).all() for g in param_groups for p in g["params"]
             if p.grad is not None and not p.grad.is_sparse and p.grad.numel() > 0]  # fmt: skip
    return bool(torch.stack(flags).all()) if flags else True


def nonfinite_step_allowed(finite: bool, policy: str, owner: str) -> bool:
    """The family's policy for NaN/Inf gradients, applied before anything is touched: "raise" (the default)
    raises ValueError; "skip" warns and skips the whole step (no parameter, state or counter changes)."""
    if finite:
        return True
    if policy == "raise":
        raise ValueError(f"{owner}: a gradient holds NaN or Inf; no state was changed "
                         "(nonfinite='skip' skips such steps instead)")  # fmt: skip
    warnings.warn(f"{owner}: a gradient holds NaN or Inf; step skipped (nonfinite='skip')", stacklevel=3)
    return False
