"""Stepping an optimizer a stack of same-shape tensors at a time (the Improved-family fast paths).

Each step partitions a group's stepping parameters by (shape, dtype, device, step count) and whatever else
the class's step branches on per tensor (`_partition_key`), and cuts each partition into stacks of at most
STACK_ELEMENTS elements (one tensor at least). A stack is a `ShapeStack`: the parameters become views of
one stacked θ buffer and each state of `optimizer.state[p]` a view of one stacked state buffer, so the
class's `_step_stack` runs once per stack with batched ops instead of once per tensor, and nothing is read
back to the host but the step's one finiteness flag. A LoRA of 1,400 tensors has a few partitions and some
tens of stacks. A stack changes (and its buffers are re-stacked, a copy) only when its parameters' step
counts diverge, after `load_state_dict`, or when a parameter's storage is replaced. A stack whose
parameters do not hold the same state keys is stepped by the reference, tensor by tensor.

The cut bounds the step's memory: a stack step holds its stacked gradient and its fp32 temporaries
(de-quantised states, reductions' inputs) for the whole stack, so when each of a LoRA's two factor shapes
was one stack, a step held 16–22 bytes per parameter of the model.
"""

from __future__ import annotations

import operator

import torch

from reference.checkpoint import check_states
from reference.sharding import whole_tensor_save
from reference.validation import gradients_are_finite, nonfinite_step_allowed

from .improved_step import fused_abs_sum
from .layout import dense_strides

WARMUP_ONLY = ("s", "last_polarity", "pre")  # dropped at t == W, as the reference's _open_param does
# the most elements in one stack: bounds a step's temporaries (~90 bytes per stacked element). LoRA-like set
# (1,400 tensors, 17M parameters), peak extra bytes/param and ms per step, t ≥ W, unbounded → 2^20 → 2^18:
# Improved 16 → 5.5 → 0.4 (341 → 320 → 349 ms), Improved_8Bit 22 → 6.3 → 0.7 (1066 → 818 → 970 ms)
STACK_ELEMENTS = 2**18


def host_scalar_dtype(state_dtype):
    """The dtype of the per-step host scalars passed to a stack step: fp64 for fp64 states, else fp32."""
    return torch.float64 if state_dtype == torch.float64 else torch.float32


def steps_in_passes(stack, early: bool) -> bool:
    """Whether a compiled stack step runs in passes split at its reductions (improved_step.Passes): a stack of
    one tensor too large to cut (over STACK_ELEMENTS) after the early phase. 16M in one tensor, ms per step
    in one graph → in passes: W/2 ≤ t < W 355 → 232, t ≥ W 178 → 51. Not while early, whose opaque
    OrthoGrad needs its input whole and whose five levels re-read the states more than the buffers cost
    (335 → 387 ms), nor on stacks of small tensors (LoRA-like, t ≥ W: 400 → 700 ms, a call per pass)."""
    return not early and stack.theta.numel() > STACK_ELEMENTS


def step_states(st: dict) -> dict:
    """A stack's states as its step takes them: a copy of the dict (a step may rebind a state in it, see
    `ShapeStack.take_rebound`) with the bool polarity as a uint8 view, as inductor's CPU code loads and stores
    bool vectors element by element (Improved on 16M, W/2 ≤ t < W: its last pass took 156 ms, 68 on uint8;
    the early phase 268 → 200 ms)."""
    states = dict(st)
    if "last_polarity" in states:
        states["last_polarity"] = states["last_polarity"].view(torch.uint8)
    return states


def group_abs_sum(parts, fp32: bool) -> torch.Tensor:
    """S = Σ|g| over the gradients of a group's stacks (`parts`: their parameters), in fp32 when `fp32`, else in the
    gradients' dtype, summed in another order than the reference's torch.cat(...).abs().sum() (equal to fp32
    round-off). fp32 gradients of stacks of several tensors: per-tensor L1 norms in one foreach call, with no
    stacked copy (LoRA-like, 1,400 tensors in 68 stacks: 50 → 18.5 ms per step); a stack of one tensor, a view,
    and other dtypes: compiled per stack (16M in one tensor: 2.7 ms, where the foreach norm takes 7.1)."""
    sums, rest = [], parts
    several = [p.grad for ps in parts if len(ps) > 1 for p in ps]
    if several and all(p.grad.dtype == torch.float32 for ps in parts for p in ps):
        sums = list(torch._foreach_norm(several, 1))
        rest = [ps for ps in parts if len(ps) == 1]
    return torch.stack(sums + [fused_abs_sum(stacked_grad(ps), fp32) for ps in rest]).sum()


def stacked_grad(params) -> torch.Tensor:
    """The gradients of a stack's parameters, [c, *shape]: a copy, or a view for one tensor."""
    return torch.stack([p.grad for p in params]) if len(params) > 1 else params[0].grad[None]


def stacked_like(tensors) -> torch.Tensor:
    """torch.stack, each slice with the tensors' own strides (a stack's tensors share them: `_partition_key`), so
    a parameter re-pointed into it keeps its memory format."""
    first = tensors[0]
    strides = dense_strides(first)
    if first.is_contiguous() or strides is None:
        return torch.stack(tensors)
    out = torch.empty_strided((len(tensors), *first.shape), (first.numel(), *strides), dtype=first.dtype,
                              device=first.device)  # fmt: skip
    torch._foreach_copy_(list(out.unbind(0)), list(tensors))
    return out


class ShapeStack:
    """Same-shape parameters whose θ and tensor states are stacked along a new dim 0."""

    def __init__(self, optimizer, params):
        self.params = params
        self.theta = stacked_like([p.detach() for p in params])
        for i, p in enumerate(params):
            p.data = self.theta[i]
        self.ptrs = [p.data_ptr() for p in params]
        self.optimizer = optimizer
        self.states: dict[str, torch.Tensor] = {}
        self.views: dict[str, list] = {}  # each state's per-parameter views, as set into the entries
        for key in self.tensor_keys(optimizer.state[params[0]]):
            self.set(key, torch.stack([optimizer.state[p][key] for p in params]))
        self.entries = [optimizer.state[p] for p in params]  # replaced or removed (a reset): the stack is stale
        self.avg_lr: torch.Tensor | None = None  # per-tensor means, written to the states lazily

    @staticmethod
    def tensor_keys(state) -> list:
        return [k for k, v in state.items() if torch.is_tensor(v)]

    def valid(self) -> bool:
        """Whether the stack still holds its parameters' state: no entry replaced or removed, no state in one
        assigned or deleted (torch's optimizers read their state at every step), no parameter storage replaced."""
        # identity tests by map(operator.is_, ...), C-level: a generator per test took ~15 ms per LoRA-like step
        # (68 stacks of 21 tensors, 7 states each)
        if not all(map(operator.is_, map(self.optimizer.state.get, self.params), self.entries)):
            return False
        for key, kept in self.views.items():
            if not all(map(operator.is_, map(operator.methodcaller("get", key), self.entries), kept)):
                return False
        return [p.data_ptr() for p in self.params] == self.ptrs

    def set(self, key: str, stacked: torch.Tensor) -> None:
        """Own `stacked` as state `key`; each parameter's state entry becomes a view of it."""
        self.states[key] = stacked
        self.views[key] = list(stacked.unbind(0))
        for p, view in zip(self.params, self.views[key], strict=True):
            self.optimizer.state[p][key] = view

    def take_rebound(self, passed: dict) -> None:
        """Own the states a step rebound in `passed` (a copy of `states` it was given): a state that took
        another dtype, as the reference's `state[key] = value` does (a view of the state, `step_states`'s
        polarity, is not one)."""
        for key, value in passed.items():
            held = self.states[key]
            if value is not held and value.untyped_storage().data_ptr() != held.untyped_storage().data_ptr():
                self.set(key, value)

    def drop(self, key: str) -> None:
        self.states.pop(key, None)
        self.views.pop(key, None)
        for p in self.params:
            self.optimizer.state[p].pop(key, None)

    def flush_avg_lr(self) -> None:
        if self.avg_lr is not None:
            for p, entry, value in zip(self.params, self.entries, self.avg_lr.tolist(), strict=True):
                if self.optimizer.state.get(p) is entry:  # not into an entry that replaced (reset) this one
                    entry["avg_lr"] = value
            self.avg_lr = None


class StackedSteps:
    """Mixed in before a reference AutomagicBase class: its `_step_groups` steps shape stacks through the
    subclass's `_step_stack(stack, stacked grad, group, S, *group terms)`."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._stacks: dict[tuple, ShapeStack] = {}

    # ------------------------------------------------------------------ partitions
    def _partition_key(self, p) -> tuple:
        return (tuple(p.shape), p.stride(), p.dtype, p.device, self.state[p].get("step", 0) + 1)

    def _partitions(self, updating) -> list[list]:
        parts: dict = {}
        for p in updating:
            parts.setdefault(self._partition_key(p), []).append(p)
        cut = []
        for ps in parts.values():
            size = max(1, STACK_ELEMENTS // max(1, ps[0].numel()))
            cut += [ps[i : i + size] for i in range(0, len(ps), size)]
        return cut

    def _stack_for(self, params) -> ShapeStack | None:
        key = tuple(id(p) for p in params)
        stack = self._stacks.get(key)
        if stack is not None and stack.valid():
            return stack
        keys = [sorted(ShapeStack.tensor_keys(self.state[p])) for p in params]
        if any(k != keys[0] for k in keys):
            return None
        for old in [k for k, s in self._stacks.items() if set(k) & set(key)]:
            self._stacks.pop(old).flush_avg_lr()
        stack = self._stacks[key] = ShapeStack(self, params)
        return stack

    def _flush(self) -> None:
        for stack in self._stacks.values():
            stack.flush_avg_lr()

    def _has_stacked(self, stack: ShapeStack, key: str) -> bool:
        return key in stack.states or f"{key}_q" in stack.states

    def _adopt(self, stack: ShapeStack, states) -> None:
        """Stack the tensor states that `_store` just created in every parameter's state."""
        for key in ShapeStack.tensor_keys(states[0]):
            if key not in stack.states:
                stack.set(key, torch.stack([state[key] for state in states]))

    # ------------------------------------------------------------------ step
    def _check_states(self) -> None:
        """The parameters of a stack that still holds their state are its views (`ShapeStack.valid`); the others'
        entries are checked."""
        check_states(self, {id(p) for stack in self._stacks.values() if stack.valid() for p in stack.params})

    def _gradients_finite_or_allowed(self) -> bool:
        return True  # checked in _step_groups, on the stacked gradients

    def _group_terms(self, group, updating, parts, group_sum) -> tuple:
        """Per-group values the reference's group pre-pass computes besides S (`group_sum`), passed on to
        `_step_stack` and `_step_param` after S (none here). `parts`: the group's stacks' parameters (see
        `stacked_grad`)."""
        return ()

    def _step_groups(self):
        plan = []  # (group, stepping params, partitions, S)
        for group in self.param_groups:
            updating = self._stepping_params(group)
            if updating:
                parts = self._partitions(updating)
                # S = Σ|g| over the group (AGR); a stack's gradient is stacked when it steps, so the step holds
                # one stacked gradient at a time, not the whole group's
                total = group_abs_sum(parts, self.fixed)
                plan.append((group, updating, parts, total))
        # the step's one host sync: S is finite unless a gradient is not (or Σ|g| overflows, checked exactly)
        finite = bool(torch.stack([total for *_, total in plan]).isfinite().all()) if plan else True
        finite = finite or gradients_are_finite(self.param_groups)
        if not nonfinite_step_allowed(finite, self.nonfinite, type(self).__name__):
            return
        for group, updating, parts, group_sum in plan:
            for p in updating:
                if len(self.state[p]) == 0:
                    self._init_state(p, group)
            terms = self._group_terms(group, updating, parts, group_sum)
            self._set_floor(group_sum, updating)  # the round-off floor (fixed mode), as the reference's
            for params in parts:
                stack = self._stack_for(params)
                if stack is None:  # mixed state keys: the reference, tensor by tensor
                    self._flush()
                    for p in params:
                        self._step_param(p, group, group_sum, *terms)
                else:
                    self._step_stack(stack, stacked_grad(params), group, group_sum, *terms)

    def _open_stack(self, stack: ShapeStack, group):
        """The stack's `_open_param`: t += 1, and at t == W the warm-up-only states are dropped.
        Returns (the parameters' states, t, early, warm, the state dtype, θ in it)."""
        dtype = self._state_dtype(stack.params[0].dtype)
        states = [self.state[p] for p in stack.params]
        for state in states:
            state["step"] += 1
        t = states[0]["step"]
        if t == group["warmup_steps"]:
            for key in WARMUP_ONLY:
                self._drop_stacked(stack, key)
        theta = stack.theta if stack.theta.dtype == dtype else stack.theta.to(dtype)
        return states, t, self._early(group, t), t < group["warmup_steps"], dtype, theta

    def _drop_stacked(self, stack: ShapeStack, key: str) -> None:
        stack.drop(key)

    def _uncompiled(self, dtype, early: bool, stack: ShapeStack) -> bool:
        """Stacks whose upstream numerics only the reference's own roundings reproduce run `stack_step`
        uncompiled: bf16 states (upstream rounds to bf16 after every op; the compiled graph's emulated
        roundings differ where it splits an op, e.g. a + α·b, and the LR mask's polarity decisions then
        flip on single elements) and, while early, one-element tensors (OrthoGrad returns their rounding
        noise rescaled to ‖x‖, since x is parallel to θ)."""
        if self.fixed:
            return False
        return dtype == torch.bfloat16 or (early and stack.theta[0].numel() == 1)

    # ------------------------------------------------------------------ persistence
    @whole_tensor_save
    def state_dict(self):
        self._flush()
        return super().state_dict()

    def _load_state_dict(self, state_dict):
        self._flush()
        self._stacks.clear()
        super()._load_state_dict(state_dict)

    def _report(self):
        self._flush()
        super()._report()
