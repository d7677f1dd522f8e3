"""Fast Automagic_CameAMP: same name, kwargs, compat modes and state_dict format as the reference.

Each param group's parameters are packed per (dtype, device) into a flat chunked buffer (bucket.py)
and stepped by a few compiled passes (automagic_step.py); the compiled graphs depend on the phase
flags, not on the number or the shapes of the tensors. What differs from `reference`:
  * parameters become views of the bucket buffer (values, shapes and identities are unchanged);
  * `optimizer.state[p]` holds the reference's keys as views of the bucket buffers (8-bit: codes and block
    absmax), so it follows every step and `state_dict()` is torch's own; two exceptions: the warm-up polarity
    (a uint8 or bit-packed buffer) is added by `state_dict()` only, and `avg_lr` is brought up to date there;
  * under FSDP2 each rank steps and holds the state of its own rows (`steps_local_shards`): `optimizer.state[p]`
    holds this rank's rows of each parameter-shaped state (and of ALLoRA's [rows, 1] ρ) as plain tensors, and
    `state_dict()` gives them as DTensors sharded like p (Shard(0) of the whole shape); scalars and the fixed
    mode's 0-d TAM s, the same on every rank, stay as they are;
  * reductions are summed in a different order, and bf16 arithmetic is done in fp32 with one rounding
    per stored value, so results agree to the tolerances in equivalence_tests/tolerances.py.
"""

from __future__ import annotations

import numpy as np
import torch

from reference.automagic_base import FIXED_EPS, AutomagicBase
from reference.checkpoint import check_class, check_entry
from reference.lr_mask import POST_WARMUP_MIN_SCALE
from reference.persistence import saved_param_map
from reference.roundoff_floor import ROUNDOFF_FLOOR
from reference.validation import gradients_are_finite, nonfinite_step_allowed

from . import automagic_step as S
from .adopting_load import load_adopting
from .bucket import Bucket, detached, release_if_changed, trainable_params
from .kernels import allora_table, in_fp32_range, masked_tensor_sum, row_norms
from .shard_sums import on_every_rank, over_ranks
from .tables import columns, constants

assert FIXED_EPS == 1e-12  # the kernels hard-code the same guard


class Automagic_CameAMP(AutomagicBase):
    """Fused, flat-buffer Automagic_CameAMP. See reference.Automagic_CameAMP for the algorithm."""

    quantized_states = False  # the *8bit classes: blockwise 8-bit states (codec.QState)
    # FSDP2: each rank steps its own rows and holds their state, its sums all-reduced (reference.sharding,
    # optimized.shard_sums); a subclass that needs more than sums steps whole tensors
    steps_local_shards = True

    @property
    def _variant(self) -> dict:
        """The pipeline switches of automagic_step.Flags where a subclass differs from O1."""
        return {"v2": False, "fresh_residual": False, "store_post_mask": False}

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._buckets: dict[int, list[Bucket]] = {}
        self._members: dict[int, list] = {}  # the tensors each group's buckets were built over

    # ------------------------------------------------------------------ buckets
    def _group_buckets(self, gi: int) -> list[Bucket]:
        """One bucket per (dtype, device) over the group's trainable tensors (`requires_grad`, not empty: a frozen
        parameter takes no place, state or workspace); with 8-bit states, 0-d parameters get a bucket of their
        own, as the reference quantises only tensors with a dimension. The 8-bit classes' states are fp32 before
        quantisation, so that bucket's states are fp32 too, whatever the parameter dtype (as the reference's).
        When the trainable set changes (`requires_grad` flipped), the buckets are rebuilt with every state kept."""
        trainable = trainable_params(self.param_groups[gi])
        carried = release_if_changed(self, gi, trainable)
        if gi not in self._buckets:
            by_key: dict = {}
            for p in trainable:
                by_key.setdefault((p.dtype, p.device, self.quantized_states and p.dim() > 0), []).append(p)
            self._buckets[gi] = [
                Bucket(
                    ps,
                    torch.float32 if self.quantized_states else self._state_dtype(dt),
                    quantized=q,
                    exact_zero=self.fixed,
                )
                for (dt, _, q), ps in by_key.items()
            ]
            self._members[gi] = trainable
            if carried:
                self._carry(gi, carried)
        return self._buckets[gi]

    def _carried_entry(self, b: Bucket, i: int, group) -> dict:
        """Tensor i's state as a checkpoint entry of its own ({} before its first step; see `release_if_changed`)."""
        if not b.started[i]:
            return {}
        self._refresh_avg_lr(b)
        entry = self._entry(b, i, group)
        bits = b.packed_polarity(i) if b.published_warm[i] else None
        return entry if bits is None else {**entry, "last_polarity": bits}

    def _carry(self, gi: int, carried: dict) -> None:
        """Load the entries `release_if_changed` kept into the group's new buckets."""
        group = self.param_groups[gi]
        for b in self._buckets[gi]:
            for i, p in enumerate(b.params):
                if p in carried:
                    self._import(b, i, group, carried[p])
            self._publish(b, group)

    def _extra_states(self) -> dict:
        """States beyond O1's, as {name: start value} (C-Optim's multi-scale momenta)."""
        return {}

    def _allocate(self, bucket: Bucket, group):
        bucket.allocate(group["came"], self.fixed, self._start_lr(group))
        bucket.ensure_warm_buffers(self.fixed)
        bucket.add_states(self._extra_states())

    def _start(self, bucket: Bucket, group, new):
        """Initialise the state of the tensors that take their first step (spec O1 'State')."""
        start_lr = self._start_lr(group)
        self._allocate(bucket, group)
        fills = {"exp_avg": 0, "exp_avg_sq": 0, "exp_avg_res": 0, "s": 0, "lr_mask": start_lr,
                 "last_polarity": 0, **self._extra_states()}  # fmt: skip
        for name, value in fills.items():
            bucket.fill(name, value, new)
        bucket.lr_max[new] = self._start_lr_max(group)
        bucket.avg_lr[new] = start_lr
        bucket.avg_lr_stale[new] = False
        if not group["full_finetune"] and any(bucket.layout.is_matrix[i] for i in np.flatnonzero(new)):
            norms = row_norms(bucket.theta, bucket.layout, wide=self.fixed)
            bucket.set_row_scaling(allora_table(norms, 1.0 / group["eta"] ** 2), new)
        bucket.started |= new

    # ------------------------------------------------------------------ step
    def _check_states(self) -> None:
        """Done by `_adopt_edits` for the entries edited since the last step; the others are the buffers' views."""

    def _gradients_finite_or_allowed(self) -> bool:
        """Checked in `_step_groups` instead, on the packed gradients' sums: one sync per step and no
        per-tensor kernels."""
        return True

    def _finite_on_every_rank(self) -> bool:
        """Every gradient finite (its group's Σ|g| overflowed, or one holds NaN or Inf): on every rank, where the
        buckets hold FSDP2 shards, so that all ranks take the same decision."""
        return on_every_rank([b for bs in self._buckets.values() for b in bs], gradients_are_finite(self.param_groups))

    def _step_groups(self):
        prepared = [self._gather_group(gi, group) for gi, group in enumerate(self.param_groups)]
        # Σ|g| of a group is finite unless a gradient holds NaN or Inf, or the sum overflows (checked exactly)
        sums = [prep[1] for prep in prepared if prep is not None]
        finite = not sums or bool(torch.isfinite(torch.stack(sums)).all()) or self._finite_on_every_rank()
        if not nonfinite_step_allowed(finite, self.nonfinite, type(self).__name__):
            return
        for group, prep in zip(self.param_groups, prepared, strict=True):
            context = self._group_context()  # per group, with or without gradients, as the reference
            if prep is not None:
                work, group_sum, mu, sigma, count = prep
                for b, has, grad, abs_sum, _ in work:
                    self._step_bucket(b, group, has, grad, group_sum, mu, sigma, abs_sum, count, context)

    def _group_context(self) -> tuple:
        """Per-group extras of the step (C-Optim: Λ and the edge flag)."""
        return ()

    def _bucket_context(self, b: Bucket, group, t, active, *context):
        """automagic_step.Context of this step (C-Optim), or None."""
        return None

    def _gather_group(self, gi, group):
        """Pack the group's gradients into its buckets' buffers (state is not touched). Returns (work, S = Σ|g|
        in fp32, μ, σ), or None when no parameter of the group has a gradient."""
        buckets = self._group_buckets(gi)
        has_grads = []
        for b in buckets:
            b.check_views()
            self._adopt_edits(b, group)
            has_grads.append(np.array([p.grad is not None for p in b.params], dtype=bool))
        if not any(h.any() for h in has_grads):
            return None
        # (bucket, has_grad, gradient buffer, per-tensor Σ|g|, per-tensor Σg²) of the buckets with gradients
        work = []
        for b, has in zip(buckets, has_grads, strict=True):
            if has.any():
                grad = b.gather_grads(has)
                work.append((b, has, grad, *over_ranks(b.shard_sums, *S.gradient_partials(grad, b.idx))))
        count = sum(n for b, has, *_ in work for n, h in zip(b.numels(), has, strict=True) if h)
        # the group's Σ|g| and Σg² overflow where the reference's float32 sums do (kernels.in_fp32_range)
        abs_total = in_fp32_range(sum(abs_sum.sum() for *_, abs_sum, _ in work))
        sq_total = in_fp32_range(sum(sq_sum.sum() for *_, sq_sum in work))
        group_sum = abs_total.to(torch.float32)
        mu = abs_total / count
        sigma = (sq_total / count - mu * mu).clamp(min=0).sqrt()
        return work, group_sum, mu, sigma, count

    def _step_bucket(self, b: Bucket, group, has_grad, grad, group_sum, mu, sigma, abs_sum, count, context=()):
        """One bucket's step; `count`: the group's gradient elements (for the round-off floor). A bucket holds only
        trainable tensors (`_group_buckets` rebuilt it before the gradients were gathered), so those with a
        gradient are the active ones."""
        active = has_grad
        if not active.any():
            return
        new = active & ~b.started
        if new.any():
            self._start(b, group, new)
        W, came = group["warmup_steps"], group["came"]
        beta1, beta2, beta3 = group["betas"]
        eps1, eps2, _ = group["eps"]
        t = b.step + active
        if W >= 1 and (active & (t == W)).any():
            self._forget_warm_state(b, active & (t == W))
        if b.states["s"] is None and (active & (t < W)).any():
            b.ensure_warm_buffers(self.fixed)

        seed = active & came & (t == 1) & (not self._variant["v2"])  # V1 seeds v at t = 1
        upd = active & ~seed
        early, warm = t < W / 2, t < W
        wd_on = (group["weight_decay"] > 0) & (early | (self.fixed and self.wd_until == "always"))

        per_tensor = self._host_numbers(b, group, t, upd, warm)
        step_context = self._bucket_context(b, group, t, active, *context)
        dev = b.device
        mask = [self._mask_setting(group, key) for key in ("lr_bump", "min_lr", "max_lr")]
        consts = S.Consts(*constants([beta1, 1 - beta1, beta2, 1 - beta2, beta3, 1 - beta3, eps1, eps2,
                                      group["clip_threshold"], group["weight_decay"], *mask, ROUNDOFF_FLOOR / count],
                                     dev))  # fmt: skip
        st = b.states
        has_rho = not group["full_finetune"] and any(b.layout.is_matrix)
        if has_rho and self.fixed:  # T9a, corrected [I-28]: ρ from the rows before this step, of the
            # tensors that step (a tensor without a gradient keeps its ρ, as in the reference)
            b.set_row_scaling(allora_table(row_norms(b.theta, b.layout, wide=True), 1.0 / group["eta"] ** 2), active)
        if has_rho and b.row_factor_stale:
            b.refresh_row_factor()
        bufs = S.Buffers(b.theta, grad, st["exp_avg"], st["exp_avg_sq"], st["exp_avg_res"], st["s"],
                         st["lr_mask"], b.polarity_codes(), b.row_factor,
                         b.blocks.blocks if b.quantized else None, step_context)  # fmt: skip
        stats = (group_sum.to(dev), mu.to(dev), sigma.to(dev), abs_sum)
        # the phases, each stepped as one partition: seeding v (V1, t = 1), t < W/2, W/2 ≤ t < W, t ≥ W
        phases = [(seed, True, False, False), (upd & early, False, True, True),
                  (upd & ~early & warm, False, False, True), (upd & ~warm, False, False, False)]  # fmt: skip
        for member, seeding, in_early, in_warm in phases:
            if not member.any():
                continue
            flags = S.Flags(
                came=bool(came), fixed=self.fixed, seeding=seeding, early=in_early, warm=in_warm,
                has_wd=not seeding and bool((member & wd_on).any()), has_rho=has_rho, masked=not member.all(),
                padding_safe=eps1 > 0 and eps2 > 0 and not b.quantized, contextual=step_context is not None,
                **self._variant,
            )  # fmt: skip
            table = S.PerTensor(*columns([member, *per_tensor], dev))
            mask_sums = S.fused_step(bufs, b.layout, b.idx, table, consts, *stats, flags, b.scratch, b.shard_sums)
            if mask_sums is not None:  # 8-bit mask: avg_lr is the mean of the mask before quantisation
                b.avg_lr_dev = torch.where(table.member > 0, mask_sums / b.idx.numel_t, b.avg_lr_dev)
        b.step = t
        b.avg_lr_stale |= upd & warm
        if (b.step >= W / 2).all():
            b.work.clear()  # the early-phase scratch
        if W >= 1 and (b.step >= W).all():
            b.drop_warm_buffers()
        b.copy_out()
        if b.shard_sums is not None:  # here, so that state_dict() makes no collective (one rank alone may save)
            self._refresh_avg_lr(b)
        self._publish(b, group, active)

    def _host_numbers(self, b: Bucket, group, t, upd, warm) -> list:
        """PerTensor's columns after `member` (numpy [T]): β1_t, 1 − β1_t, δ^t, 1 − δ^t, the residual's bias
        correction, and T8a's lr_max bookkeeping (the warm-up mask's (η − lr_max) jump, the post-warm-up scale),
        t^¼ (the ADOPT clip bound). Updates b.lr_max."""
        lr, decay = group["lr"], group["beta1_decay"]
        beta1, _, beta3 = group["betas"]
        shift = np.zeros(len(t))
        scale = np.ones(len(t))
        raise_max = upd & (lr > b.lr_max)
        if self._variant["store_post_mask"]:  # T8b: no (η − lr_max) jump, lr_max kept while warming up
            raise_max &= ~warm
        shift[raise_max & warm] = lr - b.lr_max[raise_max & warm]
        b.lr_max[raise_max] = lr
        lower = upd & ~warm & (lr < b.lr_max)
        scale[lower] = np.maximum(lr / b.lr_max[lower], POST_WARMUP_MIN_SCALE)

        tf = t.astype(np.float64)  # 0 for a tensor that has not stepped yet (inactive; its row is unused)
        beta1_t = np.maximum(beta1 * decay**tf, 0.4)
        alpha = 1.0 * decay**tf
        inv_bias_corr = 1 / (1 - beta3 ** np.maximum(tf, 1)) if self.fixed else np.ones_like(tf)
        return [beta1_t, 1 - beta1_t, alpha, 1 - alpha, inv_bias_corr, shift, scale, tf**0.25]

    def _forget_warm_state(self, b: Bucket, ending):
        """T27.1: at t == W the warm-up-only state of those tensors is dropped (zeroed here)."""
        if b.states["s"] is None:
            return
        for name in ("s", "last_polarity"):
            b.fill(name, 0, ending)

    # ------------------------------------------------------------------ monitoring
    def _refresh_avg_lr(self, b: Bucket):
        if b.avg_lr_stale.any():
            if b.quantized:
                means = b.avg_lr_dev.cpu().numpy()
            else:
                (sums,) = over_ranks(b.shard_sums, masked_tensor_sum(b.states["lr_mask"], b.idx))
                means = (sums / b.idx.numel_t).cpu().numpy()
            b.avg_lr[b.avg_lr_stale] = means[b.avg_lr_stale]
            b.avg_lr_stale[:] = False

    def _get_group_lr(self, group) -> float:
        """T27.8: mean avg_lr over the group's started parameters, else the constructor lr."""
        gi = self.param_groups.index(group)
        values = []
        for b in self._buckets.get(gi, []):
            self._refresh_avg_lr(b)
            values.extend(b.avg_lr[b.started].tolist())
        return float(torch.mean(torch.tensor(values))) if values else self.defaults["lr"]

    def state_bytes(self) -> int:
        """Bytes held by optimizer state (not parameters or gradients)."""
        return sum(b.state_bytes() for bs in self._buckets.values() for b in bs)

    def workspace_bytes(self) -> int:
        """Bytes of persistent work buffers: the gradient buffer (which `p.grad` then points into) and
        the early-phase scratch."""
        return sum(b.workspace_bytes() for bs in self._buckets.values() for b in bs)

    # ------------------------------------------------------------------ persistence
    def _locate(self):
        """Parameter → (bucket, index) for every bucketed parameter."""
        where = {}
        for gi in range(len(self.param_groups)):
            for b in self._group_buckets(gi):
                for i, p in enumerate(b.params):
                    where[p] = (b, i)
        return where

    def _publish(self, b: Bucket, group, tensors=None) -> None:
        """`optimizer.state[p]` of the started tensors in `tensors` (numpy bool [T]; None: all): the reference's
        keys, tensors as views of the bucket's buffers, scalars as the reference's numbers. An entry is rebuilt
        when its buffers or its key set change (a state created or dropped, warm-up ended); otherwise only its
        scalars are written. `avg_lr` is brought up to date by `state_dict()` (its mean is taken lazily)."""
        W = group["warmup_steps"]
        rebuild = tensors is None or b.published != b.signature()
        chosen = b.started if rebuild else tensors & b.started
        for i in np.flatnonzero(chosen):
            p, warm = b.params[i], bool(W == 0 or b.step[i] < W)
            entry = self.state.get(p)
            if rebuild or not entry or b.published_warm[i] != warm:
                self.state[p] = entry = self._entry(b, i, group)
                b.entries.watch(i, entry)
                b.published_warm[i] = warm
            else:
                entry.update(self._scalars(b, i))
        b.entries.seal()
        b.published = b.signature()

    def _adopt_edits(self, b: Bucket, group) -> None:
        """An entry of `optimizer.state` edited since it was built is taken up before the step, as torch's
        optimizers read their state: emptied or removed (e.g. `optimizer.state = defaultdict(dict)` to reset),
        the tensor restarts; replaced by another dict, or a value in it assigned, its values are loaded into the
        buffers."""
        edited = b.entries.edited(self.state)
        if not edited:
            return
        self._refresh_avg_lr(b)  # before any import changes the masks
        entries = {i: self.state.get(b.params[i]) for i in edited}
        for i, entry in entries.items():  # all checked before any is loaded
            if entry and entry is b.entries[i]:  # edited in place: what it holds lazily stays as the optimizer has it
                entry = entries[i] = self._with_lazy_values(b, i, entry)
            if entry:
                check_entry(self, "an entry assigned into optimizer.state", entry, b.params[i], group)
        gone = np.zeros(len(b.params), dtype=bool)
        for i, entry in entries.items():
            if entry:
                self._import(b, i, group, detached(entry))
            else:
                gone[i] = True
        if gone.any():
            self._restart(b, gone)
        self._publish(b, group)

    def _with_lazy_values(self, b: Bucket, i: int, entry: dict) -> dict:
        """Tensor i's entry, edited in place, with the values the optimizer writes into it lazily, where the edit
        left them: avg_lr (up to date) and an 8-bit bucket's packed polarity (which it cannot hold as a view)."""
        out = dict(entry)
        if b.entries.untouched(i, "avg_lr"):
            out["avg_lr"] = float(b.avg_lr[i])
        if b.quantized and b.published_warm[i] and "last_polarity" not in entry:
            out["last_polarity"] = b.packed_polarity(i)
        return out

    def _scalars(self, b: Bucket, i: int) -> dict:
        """Tensor i's host-side state (C-Optim adds its counters)."""
        return {"step": int(b.step[i]), "lr_max": float(b.lr_max[i])}

    def _entry(self, b: Bucket, i: int, group) -> dict:
        t, W = int(b.step[i]), group["warmup_steps"]
        out = {**self._scalars(b, i), "avg_lr": float(b.avg_lr[i])}
        names = ["lr_mask", "exp_avg", "exp_avg_res"]
        if W == 0 or t < W:
            names += ["last_polarity", "s"]
        if group["came"]:
            names.append("exp_avg_sq")
        for name in [*names, *self._extra_states()]:
            out.update(b.state_views(name, i))
        if not group["full_finetune"] and b.layout.is_matrix[i]:
            out.update(b.row_scaling_views(i))
        return out

    def _state_dict(self):
        """torch's own state_dict of `optimizer.state` (its hooks run on it), after avg_lr is brought up to date;
        an 8-bit bucket's packed warm-up polarity, the one state `optimizer.state` cannot hold as a view, is added
        first (`_add_polarity`)."""
        for gi, group in enumerate(self.param_groups):
            for b in self._buckets.get(gi, []):
                self._adopt_edits(b, group)  # what was assigned into optimizer.state is what gets saved
                self._refresh_avg_lr(b)
                for i in np.flatnonzero(b.started):
                    if entry := self.state.get(b.params[i]):
                        entry["avg_lr"] = float(b.avg_lr[i])
                b.entries.seal()
        handle = self.register_state_dict_post_hook(self._add_polarity, prepend=True)
        try:
            return super()._state_dict()
        finally:
            handle.remove()

    def _add_polarity(self, _optimizer, sd):
        ids = {p: pid for pid, p in saved_param_map(self, sd).items()}
        for gi in range(len(self.param_groups)):
            for b in (b for b in self._buckets.get(gi, []) if b.quantized):
                for i in np.flatnonzero(b.started & b.published_warm):
                    bits, pid = b.packed_polarity(i), ids[b.params[i]]
                    if bits is not None and pid in sd["state"] and "last_polarity" not in sd["state"][pid]:
                        sd["state"][pid] = {**sd["state"][pid], "last_polarity": bits}
        return sd

    def _check_state_dict(self, state_dict):
        """Only the class here: load_adopting checks the rest as the user's load pre-hooks return it, before
        anything changes (the class name is dropped on the way there)."""
        check_class(self, state_dict)

    def _load_state_dict(self, state_dict):
        """torch's own load, then the buffers take the loaded values (see adopting_load)."""
        load_adopting(self, state_dict, super()._load_state_dict, self._adopt)

    def _adopt(self, state_dict):
        """Copy a loaded state_dict (the saved values, before torch's cast to the parameter dtype) into the buffers."""
        id_map = saved_param_map(self, state_dict)
        where = self._locate()
        for b in {id(b): b for b, _ in where.values()}.values():
            self._restart(b)  # a parameter the checkpoint has no state for restarts, as in the reference
        # a frozen parameter's state stays as torch loaded it (as in the reference), until it trains again
        kept = {p: self.state[p] for p in id_map.values() if p not in where and self.state.get(p)}
        for p in [k for k in self.state if torch.is_tensor(k)]:  # entries that are not a parameter's stay
            del self.state[p]
        for pid, saved in state_dict["state"].items():
            if not saved or pid not in id_map or id_map[pid] in kept:  # not started; not a parameter's; frozen
                continue
            b, i = where[id_map[pid]]
            group = next(g for g in self.param_groups if any(q is b.params[i] for q in g["params"]))
            self._import(b, i, group, saved)
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                self.state[p] = kept.get(p, {})  # or a placeholder (see AutomagicBase.add_param_group)
            for b in self._group_buckets(gi):
                self._publish(b, group)

    def _restart(self, b: Bucket, tensors=None):
        b.restart(tensors)

    def _import(self, b: Bucket, i: int, group, saved: dict):
        self._allocate(b, group)
        b.step[i], b.lr_max[i] = int(saved["step"]), float(saved["lr_max"])
        b.avg_lr[i], b.avg_lr_stale[i] = float(saved["avg_lr"]), False
        for name in ("exp_avg", "exp_avg_sq", "exp_avg_res", "lr_mask", "last_polarity", "s", *self._extra_states()):
            b.load(name, i, saved)
        b.load_row_scaling(i, saved)
        b.started[i] = True
