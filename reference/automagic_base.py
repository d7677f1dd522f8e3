"""What both implementations of Automagic_CameAMP share: construction from AutomagicConfig, the settings
that depend on `compat`, and the `magic_version` of the state_dict (spec optimizers.md O1)."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from .checkpoint import check_state_dict, check_states
from .checkpoint_layout import as_held, saving_warm_layout
from .config import AutomagicConfig
from .lr_mask import LR_MAX_INIT
from .persistence import Copyable
from .roundoff_floor import floor_roundoff, group_floor
from .sharding import whole_tensor_load, whole_tensor_save, whole_tensor_step
from .validation import check_distinct_params, check_grads, gradients_are_finite, naming_group, nonfinite_step_allowed

MAGIC_VERSION = 1
FIXED_EPS = 1e-12  # [I-05] denominator guard of the corrected mode (as upstream's AdamS uses)
MASK_BOUNDS = ("min_lr", "max_lr")  # the LR mask's clamp, per group when fixed [I-25]; OneCycleLR writes them too


class AutomagicBase(Copyable, torch.optim.Optimizer):
    config_class = AutomagicConfig
    magic_version = MAGIC_VERSION  # the state_dict's version key (Improved: 2)
    mask_clamped = True  # the LR mask is clamped to [min_lr, max_lr] (Improved_8Bit accepts and ignores them)

    def __init__(self, params, **kwargs):
        """Keyword arguments and defaults: `config_class` (reference.config.AutomagicConfig: upstream's)."""
        config = self.config_class(**kwargs)
        self.config = config  # before torch's constructor adds the groups: add_param_group checks them against it
        super().__init__(params, config.group_defaults())
        self.compat, self.verbose = config.compat, config.verbose
        self.wd_until = getattr(config, "wd_until", "warmup_half")
        self.nonfinite = config.nonfinite
        self._warned_max_lr = False
        self._floor = None  # the round-off floor of the group being stepped (see `_set_floor`)
        for group in self.param_groups:
            self._warn_if_clamped(group)
        self._record_mask_bounds()

    def add_param_group(self, param_group):
        check_distinct_params(param_group)
        self._check_group_settings(param_group, len(self.param_groups))
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            # a placeholder entry: `optimizer.state` is never empty, so torch.distributed.checkpoint does not take a
            # zero-gradient step to create state before saving or loading (the LR mask would still move θ)
            self.state[p] = {}
        if hasattr(self, "compat"):  # torch's constructor adds the first groups before compat is set
            self._warn_if_clamped(self.param_groups[-1])
            self._record_mask_bounds()

    def _check_group_settings(self, group, index: int) -> None:
        """A group's own settings (a LoRA+ or text-encoder group's lr, betas, …, or a loaded group's) get the
        constructor's checks, the class's config over the constructor's other settings, before anything changes:
        a group with lr=-1 or betas[0]=1.5 was accepted and stepped. Keys that are not settings (a group's name)
        are left alone, as torch leaves them."""
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        own = {key: value for key, value in group.items() if key in fields}
        if not own:
            return
        constructor = {key: getattr(self.config, key) for key in ("compat", "wd_until") if hasattr(self.config, key)}
        defaults = {key: value for key, value in self.defaults.items() if key in fields}
        with naming_group(index):
            self.config_class(**{**defaults, **own, **constructor})

    def _warn_if_clamped(self, group) -> None:
        """Warn once when a group's lr is above max_lr: the LR mask (T8) is clamped to max_lr at its first update,
        so the group trains at max_lr, not at the lr asked for."""
        lr, max_lr = group["lr"], self._mask_setting(group, "max_lr")
        if self.mask_clamped and lr > max_lr and not self._warned_max_lr:
            self._warned_max_lr = True
            warnings.warn(f"lr={lr:g} is above max_lr={max_lr:g}: the LR mask is clamped to max_lr, so the group "
                          "trains at max_lr; pass max_lr >= lr to train at lr", UserWarning, stacklevel=3)  # fmt: skip

    def _record_mask_bounds(self) -> None:
        """The groups' LR-mask bounds as built or loaded: `_warn_if_bounds_moved` compares against them."""
        self._mask_bounds = [tuple(group[key] for key in MASK_BOUNDS) for group in self.param_groups]

    def _warn_if_bounds_moved(self) -> None:
        """Warn when a group's min_lr/max_lr changed since it was built or loaded, once per change. The corrected
        mode clamps the LR mask to the group's values, and torch's OneCycleLR writes its own schedule's bounds
        into the same keys (max_lr, and min_lr = initial_lr / final_div_factor), so the mask's clamp moves
        silently; upstream reads the constructor's values and is not affected."""
        if not (self.fixed and self.mask_clamped):
            return
        for index, (group, was) in enumerate(zip(self.param_groups, self._mask_bounds, strict=True)):
            now = tuple(group[key] for key in MASK_BOUNDS)
            if now != was:  # stacklevel 7: the caller of step() under an LR scheduler's wrapper
                self._mask_bounds[index] = now
                warnings.warn(f"param group {index}: the LR mask's bounds (min_lr, max_lr) changed from {was} to "
                              f"{now} after the optimizer was built; torch's OneCycleLR writes its schedule's "
                              "max_lr and min_lr into these keys. The mask now clamps to the new values; to keep "
                              "the old ones, give OneCycleLR max_lr and final_div_factor that reproduce them",
                              UserWarning, stacklevel=7)  # fmt: skip

    @property
    def fixed(self) -> bool:
        return self.compat == "fixed"

    def _mask_setting(self, group, key):
        """[I-25] min_lr / max_lr / lr_bump come from the constructor upstream, from the group when fixed."""
        return group[key] if self.fixed else self.defaults[key]

    def _start_lr(self, group) -> float:
        """[I-25] the LR mask starts at the constructor lr upstream, at the group lr when fixed."""
        return group["lr"] if self.fixed else self.defaults["lr"]

    def _start_lr_max(self, group) -> float:
        """[I-26] lr_max starts at 1e-6 upstream (doubling the first mask), at the group lr when fixed."""
        return group["lr"] if self.fixed else LR_MAX_INIT

    def _state_dtype(self, dtype):
        """[I-24] states follow the parameter dtype upstream (fp16 → fp32); always fp32 when fixed."""
        return torch.float32 if (self.fixed or dtype == torch.float16) else dtype

    @torch.no_grad()
    @whole_tensor_step
    def step(self, closure=None):
        """One step; the closure runs with grad enabled (the S1 classes do), its loss is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._gradients_ok():
            return loss
        self._warn_if_bounds_moved()
        self._step_groups()
        if self.verbose:
            self._report()
        return loss

    def _gradients_ok(self) -> bool:
        """Every gradient checked (`check_grads`) and every stepping parameter's state (`_check_states`), then the
        NaN/Inf policy (`nonfinite`), before any state is touched."""
        check_grads(self.param_groups, type(self).__name__)
        self._check_states()
        return self._gradients_finite_or_allowed()

    def _check_states(self) -> None:
        """A state assigned by hand with another shape or dtype is refused here (`check_states`)."""
        check_states(self)

    def _gradients_finite_or_allowed(self) -> bool:
        """The NaN/Inf policy; the fast classes check finiteness on their packed sums instead."""
        finite = gradients_are_finite(self.param_groups)
        return nonfinite_step_allowed(finite, self.nonfinite, type(self).__name__)

    def _report(self):
        """What `verbose=True` prints after each step (upstream: the group lrs)."""
        print([group["lr"] for group in self.param_groups])

    def _step_groups(self):
        raise NotImplementedError

    def _set_floor(self, group_sum, params) -> None:
        """Before a group's parameters step: its round-off floor (corrected mode, reference.roundoff_floor), from
        S = Σ|g| over `params`, the group's parameters with a gradient."""
        self._floor = group_floor(group_sum, sum(p.numel() for p in params)) if self.fixed else None

    def _floored(self, grad):
        """The gradient the element-wise pipeline reads: round-off elements as 0 (corrected mode)."""
        return grad if self._floor is None else floor_roundoff(grad, self._floor)

    def _open_param(self, p, group):
        """The start of an Improved-family parameter step: lazy init, the gradient and θ in the state dtype,
        t += 1, and at t == W the warm-up-only state (s, last_polarity, pre) is dropped.
        Returns (state, dtype, raw g, θ, t)."""
        state = self.state[p]
        if len(state) == 0:
            self._init_state(p, group)
        dtype = self._state_dtype(p.dtype)
        raw_grad = self._floored(p.grad.to(dtype))  # a copy whenever the dtypes differ; never written to [I-03]
        theta = p.detach() if p.dtype == dtype else p.detach().to(dtype)
        state["step"] += 1
        t = state["step"]
        if t == group["warmup_steps"]:
            for key in ("s", "last_polarity", "pre"):
                self._drop(state, key)
        return state, dtype, raw_grad, theta, t

    def _stepping_params(self, group) -> list:
        """The group's parameters that take a step (a gradient, requires_grad, not empty)."""
        return [p for p in group["params"] if p.grad is not None and p.requires_grad and p.numel() > 0]

    def _init_common_state(self, p, group, dtype) -> None:
        """The state every Automagic class starts with (spec O1/O2/O6 'State'): step, lr_max, the fp32 LR mask
        and its mean, the polarity, m, s (0-d when fixed [I-18]), v (came) and r. Each is a fresh tensor in
        `dtype`, written through `_store`, so no two states alias and the 8-bit classes quantise them."""
        state = self.state[p]

        def zeros():
            return torch.zeros(p.shape, dtype=dtype, device=p.device)

        start_lr = self._start_lr(group)
        state["step"] = 0
        state["lr_max"] = self._start_lr_max(group)
        self._store(state, "lr_mask", torch.full(p.shape, float(start_lr), dtype=torch.float32, device=p.device))
        state["avg_lr"] = float(start_lr)
        state["last_polarity"] = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
        self._store(state, "exp_avg", zeros())
        self._store(state, "s", torch.zeros((), dtype=dtype, device=p.device) if self.fixed else zeros())
        if group["came"]:
            self._store(state, "exp_avg_sq", zeros())
        self._store(state, "exp_avg_res", zeros())

    # State access; the 8-bit classes (reference.state_8bit, the seed-004 class) store some keys quantised.
    def _load(self, state, key):
        return state[key]

    def _store(self, state, key, value):
        state[key] = value

    def _has(self, state, key):
        return key in state

    def _drop(self, state, key):
        state.pop(key, None)

    def state_bytes(self) -> int:
        """Bytes held by the per-parameter state tensors (measured from the tensors)."""
        entries = [s for s in self.state.values() if isinstance(s, dict)]  # torch keeps non-parameter entries too
        return sum(v.numel() * v.element_size() for s in entries for v in s.values() if torch.is_tensor(v))

    @whole_tensor_save
    def state_dict(self):
        sd = self._state_dict()
        sd["magic_version"] = self.magic_version
        sd["optimizer"] = type(self).__name__
        return sd

    @whole_tensor_load
    def load_state_dict(self, state_dict):
        state_dict = as_held(self, state_dict)
        self._check_state_dict(state_dict)
        if state_dict.get("magic_version") != self.magic_version:
            warnings.warn(
                f"loaded a state dict without magic_version={self.magic_version}; the LR mask may not be synchronised",
                stacklevel=2,
            )
        self._load_state_dict({k: v for k, v in state_dict.items() if k not in ("magic_version", "optimizer")})

    def _check_state_dict(self, state_dict):
        check_state_dict(self, state_dict)

    def _state_dict(self):
        with saving_warm_layout(self):
            return super().state_dict()

    def _warm_layout(self, p, group) -> dict:
        """The entry `p` holds during warm-up (reference.checkpoint_layout): its initial state; a class whose
        first step adds or reshapes a key says so."""
        self._init_state(p, group)
        return self.state[p]

    def _load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._record_mask_bounds()
