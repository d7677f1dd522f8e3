"""A bucket: the parameters of one param group that share a dtype and device, in one flat buffer.

The parameters become views of the bucket's `theta` buffer, so the fused step updates them in place.
Step counters and lr_max live on the host (numpy), which is where they are needed to build the
per-tensor scalars; nothing is read back from the device during a step.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from . import bitpack
from . import codec as C
from .entry_watch import EntryWatch
from .kernels import expand_rows, index_tensors, valid_mask
from .layout import build_layout
from .shard_sums import ShardSums


def detached(entry: dict) -> dict:
    """`entry` with its tensors copied: an edited entry may hold views of the buffers its import overwrites."""
    return {key: value.clone() if torch.is_tensor(value) else value for key, value in entry.items()}


class Bucket:
    """`quantized=True`: m, v, r, the LR mask, upstream's element-wise s and ALLoRA's ρ are blockwise 8-bit
    `codec.QState`s (Automagic_CameAMP8bit); their export and import use upstream's `<key>_q` and
    `<key>_q_scale` entries."""

    def __init__(self, params, state_dtype, quantized: bool = False, exact_zero: bool = False):
        """`exact_zero`: 8-bit states store an exact 0 as the code of 0 (the corrected mode; see
        reference.blockwise_8bit.quantize)."""
        # same-shape tensors adjacent: column reductions become one dense op per shape class (FSDP2 shards by their
        # whole shape, so every rank orders them alike)
        self.params = sorted(params, key=lambda p: (p.dim(), tuple(getattr(p, "_local_shard_of", p).shape)))
        first = self.params[0]
        self.dtype, self.device, self.state_dtype = first.dtype, first.device, state_dtype
        self.layout = build_layout(self.params, self.device, keep_strides=not quantized)
        self.idx = index_tensors(self.layout)
        self.shard_sums = ShardSums.of(self.params, self.device)  # None unless the tensors are FSDP2 shards
        if self.shard_sums is not None:
            self.idx = self.idx._replace(numel_t=self.shard_sums.numel_t)
        self.quantized = quantized
        self.blocks = C.build_blocks(self.layout, self.device, exact_zero) if quantized else None
        first_rows = None if self.shard_sums is None else self.shard_sums.first_rows
        self.row_blocks = C.build_row_blocks(self.layout, self.device, exact_zero, first_rows) if quantized else None
        # ALLoRA's ρ of a shard: a block shared with another rank has one absmax (ShardSums.block_max)
        shared_rho = quantized and self.shard_sums is not None
        self.rho_over_ranks = self.shard_sums.block_max(self.row_blocks, self.layout) if shared_rho else None
        self.theta = self.layout.empty(self.dtype, self.device, fill=0)
        self.views = self.layout.views(self.theta)
        torch._foreach_copy_(self.views, [p.detach() for p in self.params])
        # a parameter is re-pointed into θ when its view has its strides; else (a layout the buffer cannot take:
        # channels_last in an 8-bit bucket, a transposed matrix) it keeps its storage and is copied in and out
        self.copied = [view.stride() != p.stride() for p, view in zip(self.params, self.views, strict=True)]
        for p, view, copied in zip(self.params, self.views, self.copied, strict=True):
            if not copied:
                p.data = view
        self.ptrs = [p.data_ptr() for p in self.params]
        T = len(self.params)
        self.step = np.zeros(T, dtype=np.int64)
        self.lr_max = np.zeros(T, dtype=np.float64)
        self.started = np.zeros(T, dtype=bool)
        self.avg_lr = np.zeros(T, dtype=np.float64)
        self.avg_lr_stale = np.zeros(T, dtype=bool)
        self.avg_lr_dev = torch.zeros(T, dtype=torch.float64, device=self.device)  # 8-bit: see the class
        self.states: dict[str, torch.Tensor | None] = {}
        self.grad: torch.Tensor | None = None
        self.work: dict[str, torch.Tensor] = {}
        self.row_factor: torch.Tensor | None = None  # ALLoRA ρ per element (see kernels.expand_rows)
        self.row_factor_stale = True
        self.grad_views: list = []
        self.grad_live = np.zeros(T, dtype=bool)  # which gradient views hold a gradient
        self.host: dict[str, np.ndarray] = {}  # per-tensor host counters of a subclass (C-Optim)
        self.published: tuple | None = None  # `signature()` when optimizer.state's views were built
        self.published_warm = np.zeros(T, dtype=bool)  # whether each view entry holds the warm-up keys
        self.entries = EntryWatch(self.params)  # the optimizer.state entry built for each tensor (see _publish)

    def numels(self) -> list[int]:
        """The element count of each whole tensor (of each DTensor, where the bucket holds its shard)."""
        return self.layout.numels if self.shard_sums is None else self.shard_sums.numels.tolist()

    def restart(self, tensors=None) -> None:
        """The tensors in `tensors` (numpy bool [T]; None: all) back to 'not started' (step 0), as before their
        first step; their states are refilled when they start."""
        chosen = slice(None) if tensors is None else tensors
        self.started[chosen] = False
        self.step[chosen] = 0
        self.lr_max[chosen] = 0
        self.avg_lr[chosen] = 0
        self.avg_lr_stale[chosen] = False
        self.published = None
        for i in range(len(self.params)) if tensors is None else np.flatnonzero(tensors):
            self.entries.watch(i, None)  # not started: no entry of its own to watch

    # ------------------------------------------------------------------ storage
    def allocate(self, came: bool, fixed: bool, start_lr: float):
        """Create the state buffers (zeros, mask at start_lr) the first time a tensor starts."""
        if self.states:
            return
        L, dt, dev = self.layout, self.state_dtype, self.device
        if self.quantized:  # zero padding (automagic_step.Flags.padding_safe is off)
            self.states = {
                "exp_avg": self._qstate(),
                "exp_avg_sq": self._qstate() if came else None,
                "exp_avg_res": self._qstate(),
                "s": None,
                "lr_mask": self._qstate(),
                "last_polarity": None,
                "row_scaling": C.empty_row_state(L, self.row_blocks, dev),
            }
            self.ensure_warm_buffers(fixed)
            return
        # v and r start at 1 so their padding is positive even when real elements are loaded rather
        # than seeded: the kernels rely on 0·rsqrt(v) = 0 there (automagic_step.Flags.padding_safe)
        self.states = {
            "exp_avg": L.empty(dt, dev, fill=0),
            "exp_avg_sq": L.empty(dt, dev, fill=1) if came else None,
            "exp_avg_res": L.empty(dt, dev, fill=1),
            "s": None,
            "lr_mask": L.empty(torch.float32, dev, fill=start_lr),
            "last_polarity": None,
            "row_scaling": torch.ones(L.nrows + 1, dtype=dt, device=dev),
        }
        self.ensure_warm_buffers(fixed)

    def add_states(self, names) -> None:
        """Create further element-wise states (zeros) if they do not exist yet."""
        for name in names:
            if name not in self.states:
                self.states[name] = (
                    self._qstate() if self.quantized else self.layout.empty(self.state_dtype, self.device, 0)
                )

    def _qstate(self):
        return C.empty_state(self.layout, self.blocks, self.device)

    def ensure_warm_buffers(self, fixed: bool):
        """Create the warm-up-only buffers (zeros), again if they were dropped [I-22]."""
        L, dev = self.layout, self.device
        if self.states["s"] is None:
            if fixed:
                self.states["s"] = torch.zeros(L.ntensors, dtype=torch.float32, device=dev)
            else:
                self.states["s"] = self._qstate() if self.quantized else L.empty(self.state_dtype, dev, 0)
        if self.states["last_polarity"] is None:
            # bool, so optimizer.state holds views of it; 8-bit buckets pack it to 1 bit per element
            self.states["last_polarity"] = bitpack.empty(L, dev) if self.quantized else L.empty(torch.bool, dev, False)

    def drop_warm_buffers(self):
        """T27.1: once every tensor is past warm-up, `s` and `last_polarity` are freed."""
        self.states["s"] = None
        self.states["last_polarity"] = None

    def scratch(self, name: str) -> torch.Tensor:
        """A persistent float32 work buffer in the bucket layout (see automagic_step.fused_step)."""
        if name not in self.work:
            self.work[name] = self.layout.empty(torch.float32, self.device, fill=0)
        return self.work[name]

    def refresh_row_factor(self):
        """Expand the ALLoRA table to every element (after it changed)."""
        if self.row_factor is None:
            self.row_factor = self.layout.empty(torch.float32, self.device)
        expand_rows(self.row_scaling_table(), self.layout, self.row_factor)
        self.row_factor_stale = False

    def rows(self, i: int) -> slice:
        return self.layout.row_slice(i)

    def row_scaling_rows(self, i: int) -> slice:
        start = self.layout.row_start[i]
        return slice(start, start + self.layout.shapes[i][0])

    # ------------------------------------------------------------------ per-tensor state access (eager)
    def fill(self, name: str, value: float, tensors) -> None:
        """Set the state `name` of the tensors in `tensors` (numpy bool [T]) to a constant."""
        buf = self.states[name]
        if buf is None:
            return
        if name == "last_polarity" and bitpack.is_packed(buf, self.layout.chunk):  # every bit of a byte
            value = 255 if value else 0
        if isinstance(buf, C.QState):
            tensors = torch.from_numpy(tensors).to(self.device)
            C.fill_constant(buf, value, self.blocks.blocks, valid_mask(self.idx), tensors)
        elif tensors.all():
            buf.fill_(value)
        else:
            for i in np.flatnonzero(tensors):
                buf[i if buf.dim() == 1 else self.rows(i)] = value

    def state_views(self, name: str, i: int) -> dict:
        """Tensor i's entries of state `name` in the reference's keys, as views of the bucket's buffers (what
        `optimizer.state[p]` holds). An 8-bit bucket's packed warm-up polarity is not among them: {} (see
        `packed_polarity`)."""
        buf = self.states[name]
        if isinstance(buf, C.QState):
            codes, absmax = C.tensor_views(buf, self.layout, self.blocks, i)
            return {f"{name}_q": codes, f"{name}_q_scale": absmax}
        if buf.dim() == 1:  # per-tensor (fixed-mode s)
            return {name: buf[i]}
        if name == "last_polarity" and self.quantized:
            return {}
        return {name: self.layout.view(buf, i)}

    def packed_polarity(self, i: int) -> torch.Tensor | None:
        """Tensor i's warm-up polarity as the reference's bool tensor (a copy) where the bucket packs it to one bit
        per element (8-bit buckets; torch has no 1-bit dtype to view it as), else None."""
        buf = self.states.get("last_polarity")
        if buf is None or not self.quantized:
            return None
        return bitpack.read_tensor(buf, self.layout, i)

    def polarity_codes(self) -> torch.Tensor:
        """The polarity buffer as the fused step reads it: uint8, packed or 0/1 (see kernels.warmup_mask)."""
        buf = self.states["last_polarity"]
        return buf if buf is None or self.quantized else buf.view(torch.uint8)

    def signature(self) -> tuple:
        """Changes when a state buffer is created, replaced or dropped (the views must then be rebuilt)."""
        return tuple(id(v) for v in self.states.values())

    def load(self, name: str, i: int, saved: dict) -> None:
        """Tensor i's state `name` from a saved entry; zero where the entry is absent."""
        buf = self.states[name]
        if buf is None:
            return
        if isinstance(buf, C.QState):
            if f"{name}_q" in saved:
                C.load_tensor(buf, self.layout, self.blocks, i, saved[f"{name}_q"], saved[f"{name}_q_scale"])
            else:
                tensors = np.arange(self.layout.ntensors) == i
                self.fill(name, 0.0, tensors)
            return
        if name == "last_polarity" and bitpack.is_packed(buf, self.layout.chunk):
            bits = saved.get(name, torch.zeros(self.layout.numels[i], dtype=torch.bool))
            bitpack.write_tensor(buf, self.layout, i, bits)
            return
        target = buf[i] if buf.dim() == 1 else self.layout.view(buf, i)
        if name in saved:
            target.copy_(saved[name].reshape(target.shape))
        else:
            target.zero_()

    def row_scaling_table(self) -> torch.Tensor:
        """ALLoRA's ρ of every row of the 2-D tensors (float32 [nrows + 1]; de-quantised when 8-bit)."""
        table = self.states["row_scaling"]
        if isinstance(table, C.QState):
            return C.dequantize(table, self.row_blocks.blocks).view(-1)
        return table

    def set_row_scaling(self, fresh: torch.Tensor, tensors) -> None:
        """Store ρ (a float32 [nrows + 1] table) for the 2-D tensors in `tensors` (numpy bool [T])."""
        table = self.states["row_scaling"]
        if isinstance(table, C.QState):
            matrices = torch.from_numpy(tensors & np.array(self.layout.is_matrix)).to(self.device)
            C.fill(table, fresh.view(-1, 1), self.row_blocks.blocks, None, matrices, self.rho_over_ranks)
        elif tensors.all():
            table.copy_(fresh.to(table.dtype))
        else:
            for i in np.flatnonzero(tensors):
                if self.layout.is_matrix[i]:
                    rows = self.row_scaling_rows(i)
                    table[rows] = fresh[rows].to(table.dtype)
        self.row_factor_stale = True

    def row_scaling_views(self, i: int) -> dict:
        table = self.states["row_scaling"]
        if isinstance(table, C.QState):
            codes, absmax = C.row_views(table, self.layout, self.row_blocks, i)
            return {"row_scaling_q": codes, "row_scaling_q_scale": absmax}
        return {"row_scaling": table[self.row_scaling_rows(i)].view(-1, 1)}

    def load_row_scaling(self, i: int, saved: dict) -> None:
        table = self.states["row_scaling"]
        if isinstance(table, C.QState) and "row_scaling_q" in saved:
            C.load_rows(table, self.layout, self.row_blocks, i, saved["row_scaling_q"], saved["row_scaling_q_scale"])
        elif "row_scaling" in saved:
            table[self.row_scaling_rows(i)] = saved["row_scaling"].reshape(-1)
        else:
            return
        self.row_factor_stale = True

    # ------------------------------------------------------------------ parameters and gradients
    def check_views(self):
        """Before a step: re-adopt a parameter whose `.data` was replaced (same shape and dtype), else refuse; copy
        the parameters that keep their own storage into θ."""
        for i, p in enumerate(self.params):
            if p.data_ptr() == self.ptrs[i] and not self.copied[i]:
                continue
            if p.dtype != self.dtype or p.device != self.device or tuple(p.shape) != self.layout.shapes[i]:
                raise ValueError(
                    "a parameter's dtype, device or shape changed after the optimizer was built; "
                    "build the optimizer after moving or casting the model"
                )
            self.views[i].copy_(p.detach())
            if not self.copied[i]:
                p.data = self.views[i]
            self.ptrs[i] = p.data_ptr()

    def copy_out(self):
        """After a step: θ back into the parameters that keep their own storage (see `copied`)."""
        pairs = [(p.data, view) for p, view, copied in zip(self.params, self.views, self.copied, strict=True) if copied]
        if pairs:
            torch._foreach_copy_(*map(list, zip(*pairs, strict=True)))

    def gather_grads(self, has_grad) -> torch.Tensor:
        """The gradients in the bucket's layout: zeros on padding and for tensors without a gradient.

        The buffer persists, and afterwards each `p.grad` *is* its view of it (same values). A
        backward after `zero_grad(set_to_none=False)` then accumulates straight into the buffer and
        the next step copies nothing; a fresh gradient (set_to_none=True) is copied in once.
        """
        if self.grad is None:
            self.grad = self.layout.empty(self.dtype, self.device, fill=0)
            self.grad_views = self.layout.views(self.grad)
        fresh, targets = [], []
        for i, p in enumerate(self.params):
            view = self.grad_views[i]
            if not has_grad[i]:
                if self.grad_live[i]:
                    view.zero_()
                    self.grad_live[i] = False
            elif p.grad.data_ptr() != view.data_ptr() or p.grad.shape != view.shape:
                fresh.append(p.grad)
                targets.append(view)
                p.grad = view
                self.grad_live[i] = True
        if fresh:
            torch._foreach_copy_(targets, fresh)
        return self.grad

    def state_bytes(self) -> int:
        return sum(C.nbytes(t) for t in self.states.values() if t is not None)

    def workspace_bytes(self) -> int:
        """Bytes of the persistent gradient buffer, ALLoRA's per-element ρ and the early-phase scratch."""
        bufs = [self.grad, self.row_factor, *self.work.values()]
        return sum(t.numel() * t.element_size() for t in bufs if t is not None)


def trainable_params(group) -> list:
    """The tensors of a param group that a bucket holds: trainable (`requires_grad`) and not empty."""
    return [p for p in group["params"] if p.requires_grad and p.numel() > 0]


def release_if_changed(optimizer, gi: int, trainable) -> dict | None:
    """If group gi's trainable tensors are no longer those its buckets hold, drop the buckets: each parameter gets
    its own storage back (memory format kept), each tensor's state (if it has one) becomes a standalone
    `optimizer.state` entry (`optimizer._carried_entry`), returned as {param: entry} for the new buckets to load
    (with the entries kept by tensors that train again). Else None."""
    members = optimizer._members.get(gi)
    if gi not in optimizer._buckets or (len(members) == len(trainable) and all(map(operator.is_, members, trainable))):
        return None
    group, carried = optimizer.param_groups[gi], {}
    held = {id(p) for p in members}  # a tensor trainable again takes up the standalone entry it kept while frozen
    carried.update({p: optimizer.state[p] for p in trainable if id(p) not in held and optimizer.state.get(p)})
    for b in optimizer._buckets.pop(gi):
        for i, p in enumerate(b.params):
            entry = optimizer._carried_entry(b, i, group)
            if entry:
                carried[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in entry.items()}
            optimizer.state[p] = carried.get(p, {})
            p.data = p.data.clone()
            if p.grad is not None:
                p.grad = p.grad.clone()
    return carried
