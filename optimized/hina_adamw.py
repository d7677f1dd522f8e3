"""Fast HinaAdamWOptimizer (alias CustomAdamW): same name, kwargs, compat modes and state_dict format as
reference.HinaAdamWOptimizer, stepped by the fused passes of hina_step.py over flat buckets.

Buckets are per param group and (dtype, device, 8-bit or not, wave). The reference steps the parameters
one by one, and a paired LoRA-A's or a LoKr factor's step size reads its partner's value, the new one when
the partner came first; such tensors go to a second bucket ("wave") stepped after the first, with the
factors computed just before each bucket steps (lora_factors.py). As in optimized.Automagic_CameAMP,
parameters become views of the bucket buffers, `optimizer.state[p]` holds the reference's keys as views of
the buffers (`state_dict()` is torch's own), and bf16 arithmetic is done in fp32 with one rounding per stored
value. Under FSDP2 each rank steps and holds its own rows of a tensor, as optimized.Automagic_CameAMP does
(`steps_local_shards`; `state_dict()` gives the moments and SPD anchor as DTensors sharded like p, and 8-bit
block scales as DTensors over the whole block count), but for the LoRA/LoKr factors and 8-bit tensors whose
blocks straddle the ranks, stepped whole.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reference import hina_adamw as readable
from reference.blockwise_8bit import BLOCKSIZE
from reference.checkpoint import check_entry
from reference.checkpoint_layout import as_held
from reference.dynamic_weight_decay import weight_decay_multiplier
from reference.orthograd import PARALLEL_TOL
from reference.persistence import saved_param_map
from reference.roundoff_floor import group_floor
from reference.sharding import block_scale_span, blocks_fit_shards, whole_tensor_load, whole_tensor_step
from reference.validation import check_grads, gradients_are_finite, nonfinite_step_allowed

from . import hina_step as H
from .adopting_load import load_adopting
from .bucket import Bucket, detached, release_if_changed, trainable_params
from .lora_factors import BucketFactors, dependencies
from .shard_sums import on_every_rank, over_ranks

MOMENTS = ("exp_avg", "exp_avg_sq")


class HinaAdamWOptimizer(readable.HinaAdamWOptimizer):
    """Fused, flat-buffer HinaAdamW. See reference.HinaAdamWOptimizer for the algorithm."""

    # Under FSDP2 each rank steps its own rows of a tensor (reference.sharding): every per-tensor statistic is a sum
    # (Σ|g|, Σg, Σg², OrthoGrad's ⟨θ,g⟩, ⟨θ,θ⟩ and the projected Σg⊥, Σg⊥², TAM's inner products, SPD's ‖θ − θ0‖²,
    # ‖θ‖²), all-reduced (optimized.shard_sums). LoRA and LoKr factors, whose step-size factor reads the whole pair,
    # and 8-bit tensors whose blocks straddle the ranks are stepped whole (`_shard_fits`).
    steps_local_shards = True

    def _shard_fits(self, p, rows) -> bool:
        """A tensor whose factor reads no partner steps as this rank's rows; an 8-bit one where its 4096-element
        blocks each lie within one rank's rows (reference.sharding.blocks_fit_shards)."""
        kind = self.layout.kinds.get(p, "regular")
        if kind in ("lora_a", "lora_b") or kind.startswith("lokr_"):
            return False
        return not self._eight_bit("exp_avg", p) or blocks_fit_shards(rows, math.prod(p.shape[1:]), BLOCKSIZE)

    def _block_span(self, p, key: str, first: int, count: int):
        """The span of an 8-bit state's block scales on this rank (reference.sharding._state_span)."""
        return block_scale_span(p, first, count, BLOCKSIZE) if key.endswith("_q_scale") else None

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        # SPD anchors stay in `optimizer.state` (as the reference's) until their bucket exists, then live in it
        self._anchors = {p: state["spd_anchor"] for p, state in self.state.items() if "spd_anchor" in state}
        self._buckets: dict[int, list[Bucket]] = {}
        self._members: dict[int, list] = {}  # the tensors each group's buckets were built over
        self._factors: dict[int, BucketFactors] = {}
        self._wave = self._waves()

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_wave"):  # torch's constructor adds the first groups before the waves exist
            self._wave = self._waves()

    def _twins_created(self, twins: dict) -> None:
        """The reference's layout, then the tables keyed by parameter here: the waves, and the SPD anchors not
        yet in a bucket (their state entry, gathered, moved to the twin)."""
        super()._twins_created(twins)
        self._wave = self._waves()
        for p, twin in twins.items():
            if self._anchors.pop(p, None) is not None:
                self._anchors[twin] = self.state[twin]["spd_anchor"]

    # ------------------------------------------------------------------ buckets
    def _waves(self) -> dict:
        """p → 1, or 2 where p's LoRA factor reads a parameter that the reference steps before p."""
        order = {p: k for k, p in enumerate(p for g in self.param_groups for p in g["params"])}
        deps = dependencies(self.layout) if self.use_alora else {}
        return {p: 2 if any(order[q] < k for q in deps.get(p, [])) else 1 for p, k in order.items()}

    def _group_buckets(self, gi: int) -> list[Bucket]:
        """Buckets over the group's trainable tensors (a frozen parameter takes no place, state or workspace), by
        wave, dtype, device and state width; rebuilt with every state kept when the trainable set changes."""
        trainable = trainable_params(self.param_groups[gi])
        carried = release_if_changed(self, gi, trainable)
        if gi not in self._buckets:
            by_key: dict = {}
            for p in trainable:
                key = (self._wave[p], p.dtype, p.device, self._eight_bit("exp_avg", p))
                by_key.setdefault(key, []).append(p)
            self._buckets[gi] = [self._new_bucket(ps, q, wave) for (wave, _, _, q), ps in by_key.items()]
            self._members[gi] = trainable
            live = {b for bs in self._buckets.values() for b in bs}
            self._factors = {b: f for b, f in self._factors.items() if b in live}
            for b in self._buckets[gi] if carried else ():
                for i, p in enumerate(b.params):
                    if p in carried:
                        self._import(b, i, carried[p])
                self._publish(b)
        return self._buckets[gi]

    def _carried_entry(self, b: Bucket, i: int, group) -> dict:
        """Tensor i's state as an entry of its own (for `release_if_changed`)."""
        return self._entry(b, i)

    def _new_bucket(self, params, quantized: bool, wave: int) -> Bucket:
        b = Bucket(params, torch.float32 if quantized else params[0].dtype, quantized=quantized, exact_zero=self.fixed)
        b.host["wave"] = wave
        b.add_states(MOMENTS)
        T = len(b.params)
        b.states["momentum_alignment"] = torch.zeros(T, dtype=b.state_dtype, device=b.device)
        b.host["spd_on"] = np.array([p in self._anchors for p in b.params], dtype=bool)
        if b.host["spd_on"].any():
            b.states["spd_anchor"] = b.layout.empty(b.dtype, b.device, fill=0)
            for i, p in enumerate(b.params):
                if b.host["spd_on"][i]:
                    b.layout.view(b.states["spd_anchor"], i).copy_(self._anchors.pop(p))
        kinds = [self.layout.kinds.get(p, "regular") for p in b.params]
        b.host["lora"] = np.array([k in ("lora_a", "lora_b") for k in kinds])
        b.host["lokr"] = np.array([k.startswith("lokr_") for k in kinds])
        b.host["projectable"] = np.array([p.dim() >= 2 for p in b.params])
        b.host["has_dim"] = np.array([p.dim() > 0 for p in b.params])
        b.host["alignment"] = np.zeros(T)  # the alignment without TAM (never read; see `_entry`)
        self._factors[b] = BucketFactors(b.params, self.layout, self.alora_ratio, self.fixed, b.device)
        return b

    def _all_buckets(self):
        return [(gi, b) for gi in range(len(self.param_groups)) for b in self._group_buckets(gi)]

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    @whole_tensor_step
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_grads(self.param_groups, type(self).__name__)
        work = []
        for gi in range(len(self.param_groups)):
            for b in self._group_buckets(gi):
                b.check_views()
                self._adopt_edits(b, self.param_groups[gi])
                has = np.array([p.grad is not None for p in b.params], dtype=bool)
                if has.any():
                    grad = b.gather_grads(has)
                    sums = H.gradient_sums(b.theta, grad, b.idx, self.use_orthogonal_grad)
                    work.append((gi, b, has, self._sums(b, sums)))
        # Σ|g| of a tensor is finite unless its gradient holds NaN or Inf, or the sum overflows (checked
        # exactly): one sync per step
        finite = (not work or bool(torch.isfinite(torch.cat([sums["abs"] for *_, sums in work])).all())
                  or on_every_rank([b for _, b, _, _ in work], gradients_are_finite(self.param_groups)))  # fmt: skip
        if not nonfinite_step_allowed(finite, self.nonfinite, type(self).__name__):
            return loss
        # per group, the first wave then the second; a wave's factors are computed before any of its
        # buckets steps (its buckets may hold both factors of a pair)
        for gi, group in enumerate(self.param_groups):
            floor = self._group_floor([item for item in work if item[0] == gi])
            for wave in (1, 2):
                phase = [item for item in work if item[0] == gi and item[1].host["wave"] == wave]
                factors = [self._factors[b].compute() if self.use_alora else None for _, b, _, _ in phase]
                for (_, b, has, sums), factor in zip(phase, factors, strict=True):
                    self._step_bucket(b, group, has, sums, factor, floor)
        return loss

    @staticmethod
    def _sums(b: Bucket, sums: dict) -> dict:
        """A pass's per-tensor sums of the whole tensors (over the ranks where `b` holds FSDP2 shards)."""
        return dict(zip(sums, over_ranks(b.shard_sums, *sums.values()), strict=True))

    def _group_floor(self, work):
        """The group's round-off floor from its buckets' Σ|g| (fixed mode; reference.roundoff_floor), or None."""
        if not self.fixed or not work:
            return None
        total = sum(sums["abs"][torch.from_numpy(has).to(b.device)].sum() for _, b, has, sums in work)
        count = sum(n for _, b, has, _ in work for n, h in zip(b.numels(), has, strict=True) if h)
        return group_floor(total.float(), count)

    def _step_bucket(self, b: Bucket, group, active, sums, lora_factor, floor=None):
        new = active & ~b.started
        if new.any():
            for name in (*MOMENTS, "momentum_alignment"):
                b.fill(name, 0.0, new)
            b.started |= new
        t = b.step + active
        # the partitions, each stepped with its own flags: the denominator of this step's v, and (ADOPT, t > 1)
        # the stale one
        stale = active & (t > 1) & self.use_adopt_stability
        for member, is_stale in ((active & ~stale, False), (stale, True)):
            if member.any():
                self._step_partition(b, group, member, t, is_stale, sums, lora_factor, floor)
        b.step = t
        b.copy_out()
        self._publish(b, active)

    def _step_partition(self, b: Bucket, group, member, t, stale: bool, sums, lora_factor, floor):
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        tf = np.maximum(t, 1).astype(np.float64)
        step_size = np.where(member, lr * np.sqrt(1 - beta2**tf) / (1 - beta1**tf), 0.0)
        decay = np.where(member, lr * (group["weight_decay"] * self._decay_multipliers(b, t)), 0.0)
        dev, dt = b.device, b.dtype
        flags = H.Flags(
            stale=stale,
            floor=self.fixed,
            roundoff=floor is not None,
            orthogonal=self.use_orthogonal_grad,
            tam=self.use_tam,
            grams=self.use_grams,
            cautious=self.use_cautious,
            masked=not member.all(),
            padding_safe=group["eps"] > 0 and not b.quantized,
        )
        consts = H.group_constants(group, floor, dev)
        # the per-tensor numbers in float64, written between the passes; each pass reads them in float32
        table = torch.zeros(len(t), len(H.PerTensor._fields), dtype=torch.float64, device=dev)
        cols = H.PerTensor(*table.unbind(1))
        table[:, :3] = torch.from_numpy(np.stack([member, step_size, decay], axis=1)).to(dev)
        if lora_factor is not None:
            cols.step.mul_(lora_factor)
        if floor is not None:
            sums = self._sums(b, H.floored_sums(b.theta, b.grad, floor.float(), b.idx, self.use_orthogonal_grad))
        member_t = torch.from_numpy(member).to(dev)

        def passed() -> H.PerTensor:
            return H.PerTensor(*table.float().unbind(1))

        # T7c: π = ⟨θ,g⟩/⟨θ,θ⟩ in the parameter dtype, for tensors with ≥ 2 dims and θ ≠ 0
        g_sum, g_sq = sums["sum"], sums["sq"]
        parallel = None
        if self.use_orthogonal_grad:
            ww = sums["ww"].to(dt)
            keep = torch.from_numpy(b.host["projectable"]).to(dev) & (ww > 0)
            cols.proj.copy_(torch.where(keep, sums["wg"].to(dt) / ww, 0))
            g_sum, g_sq = over_ranks(b.shard_sums, *H.projected_sums(b.theta, b.grad, passed(), consts, b.idx, flags))
            if self.fixed:  # g ∥ θ: g⊥ is rounding noise, taken as 0 (reference.orthograd.project_out)
                parallel = keep & (g_sq.sqrt() <= PARALLEL_TOL * sums["sq"].sqrt())
        # T1b: 1 + |Σg|/‖g‖ in the parameter dtype; 1 for 0-d tensors and g = 0
        cols.agr.fill_(1.0)
        if self.use_agr:
            norm = g_sq.sqrt().to(dt)
            use = torch.from_numpy(b.host["has_dim"]).to(dev) & (norm > 0)
            cols.agr.copy_(torch.where(use, 1.0 + g_sum.to(dt).abs() / norm, 1.0))
        if parallel is not None:
            cols.agr.masked_fill_(parallel, 0.0)
        if self.use_tam:
            cols.tam.copy_(self._tam_factor(b, passed(), consts, flags, t, member_t))

        spd = self.use_spd and bool(b.host["spd_on"][member].any())
        buffers = H.Buffers(b.theta, b.grad, *(b.states[name] for name in MOMENTS), b.states.get("spd_anchor"),
                            b.blocks.blocks if b.quantized else None)  # fmt: skip
        spd_sums = H.main_pass(buffers, passed(), b.idx, consts, flags, spd)
        if spd:  # T11d: η·λ·r with r = ‖θ − θ0‖/‖θ‖ in the parameter dtype (0 where ‖θ‖ = 0)
            spd_sums = over_ranks(b.shard_sums, *spd_sums)
            diff_norm, theta_norm = spd_sums[0].sqrt().to(dt), spd_sums[1].sqrt().to(dt)
            ratio = torch.where(theta_norm > 0, diff_norm / theta_norm, 0)
            on = member_t & torch.from_numpy(b.host["spd_on"]).to(dev)
            cols.spd.copy_(torch.where(on, (self.spd_lambda * ratio).double() * lr, 0.0))
            H.spd_pass(b.theta, b.states["spd_anchor"], passed(), b.idx)

    def _decay_multipliers(self, b: Bucket, t) -> np.ndarray:
        """T14 per tensor (1 unless dynamic_weight_decay and a LoRA/LoKr factor past the transition)."""
        out = np.ones(len(t))
        if not self.dynamic_weight_decay:
            return out
        for kind, is_kind in (("lora_a", b.host["lora"]), ("lokr_w1", b.host["lokr"])):
            late = is_kind & (t > self.wd_transition_steps)
            for step in np.unique(t[late]):  # one value per distinct step count (usually one)
                out[late & (t == step)] = weight_decay_multiplier(
                    kind, int(step), self.wd_transition_steps, self.wd_decay_factor, self.wd_min_ratio
                )
        return out

    def _tam_factor(self, b: Bucket, tab: H.PerTensor, consts, flags, t, member_t):
        """T4e (hina_step.tam_factor) for the tensors in `member_t`; their alignment A is written."""
        buffers = H.Buffers(b.theta, b.grad, b.states["exp_avg"], b.states["exp_avg_sq"], None,
                            b.blocks.blocks if b.quantized else None)  # fmt: skip
        dot, mm, gg = over_ranks(b.shard_sums, *H.tam_sums(buffers, tab, b.idx, consts, flags))
        correction = None
        if self.fixed:  # 1 − τβ^t
            tf = torch.from_numpy(np.maximum(t, 1).astype(np.float64)).to(b.device)
            correction = (1 - self.tam_beta**tf).float()
        old = b.states["momentum_alignment"]
        factor, alignment = H.tam_factor(dot, mm, gg, old, self.tam_beta, correction)
        old.copy_(torch.where(member_t, alignment, old))
        return factor

    # ------------------------------------------------------------------ persistence, monitoring
    def _publish(self, b: Bucket, tensors=None) -> None:
        """`optimizer.state[p]` of the tensors in `tensors` (numpy bool [T]; None: all, rebuilt): the reference's
        keys, tensors as views of the bucket's buffers; for a tensor that already has its entry, only `step`."""
        rebuild = tensors is None or b.published != b.signature()
        for i in range(len(b.params)) if rebuild else np.flatnonzero(tensors):
            p = b.params[i]
            entry = self.state.get(p)
            if rebuild or not entry or "step" not in entry:
                self.state[p] = entry = self._entry(b, i)
                b.entries.watch(i, entry)
            else:
                entry["step"] = int(b.step[i])
        b.entries.seal()
        b.published = b.signature()

    def _entry(self, b: Bucket, i: int) -> dict:
        entry = b.state_views("spd_anchor", i) if b.host["spd_on"][i] else {}
        if b.started[i]:
            entry["step"] = int(b.step[i])
            for name in MOMENTS:
                entry.update(b.state_views(name, i))
            # without TAM the alignment is never read: the reference keeps the number it started with or loaded
            entry["momentum_alignment"] = (
                b.states["momentum_alignment"][i] if self.use_tam else float(b.host["alignment"][i])
            )
        return entry

    @whole_tensor_load
    def load_state_dict(self, state_dict):
        """torch's own load, then the buffers take the loaded values (see adopting_load)."""
        state_dict = as_held(self, state_dict)
        load_adopting(self, state_dict, lambda sd: torch.optim.Optimizer.load_state_dict(self, sd), self._adopt)

    def _adopt(self, state_dict):
        """Copy a loaded state_dict (the saved values, before torch's cast) into the buffers."""
        id_map = saved_param_map(self, state_dict)
        where = {p: (b, i) for _, b in self._all_buckets() for i, p in enumerate(b.params)}
        for _, b in self._all_buckets():
            b.restart()  # a parameter the checkpoint has no state for restarts at step 0
            b.host["spd_on"][:] = False
        # a frozen parameter's state stays as torch loaded it (as in the reference), until it trains again
        kept = {p: self.state[p] for p in id_map.values() if p not in where and self.state.get(p)}
        for p in [k for k in self.state if torch.is_tensor(k)]:  # entries that are not a parameter's stay
            del self.state[p]
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = kept.get(p, {})  # or a placeholder (see reference.AutomagicBase.add_param_group)
        for pid, saved in state_dict["state"].items():
            if saved and pid in id_map and id_map[pid] not in kept:  # not: unstarted, not a parameter's, frozen
                self._import(*where[id_map[pid]], saved)
        for _, b in self._all_buckets():
            self._publish(b)

    def _import(self, b: Bucket, i: int, saved: dict) -> None:
        b.host["spd_on"][i] = "spd_anchor" in saved
        if "spd_anchor" in saved:
            if "spd_anchor" not in b.states:
                b.states["spd_anchor"] = b.layout.empty(b.dtype, b.device, fill=0)
            b.load("spd_anchor", i, saved)
        if "step" not in saved:
            return
        b.step[i], b.started[i] = int(saved["step"]), True
        for name in MOMENTS:
            b.load(name, i, saved)
        alignment = saved.get("momentum_alignment", 0.0)
        b.states["momentum_alignment"][i] = torch.as_tensor(alignment)
        b.host["alignment"][i] = float(alignment)

    def _adopt_edits(self, b: Bucket, group) -> None:
        """An entry of `optimizer.state` edited since it was built is taken up before the step (as in
        optimized.Automagic_CameAMP): emptied or removed, the tensor restarts without an SPD anchor, as the
        reference's does; replaced by another dict, or a value in it assigned, its values are loaded into the
        buffers (all checked before any is loaded)."""
        edited = b.entries.edited(self.state)
        entries = {i: self.state.get(b.params[i]) for i in edited}
        for i, entry in entries.items():  # all checked before any is loaded
            if entry:
                check_entry(self, "an entry assigned into optimizer.state", entry, b.params[i], group)
        for i, entry in entries.items():
            b.restart(np.arange(len(b.params)) == i)
            b.host["spd_on"][i] = False
            if entry:
                self._import(b, i, detached(entry))
        if edited:
            self._publish(b)

    def state_bytes(self) -> int:
        """Bytes held by optimizer state (moments, alignments, SPD anchors), in the buckets built so far (without
        building any: under FSDP2 they are built over the twins a step makes, reference.sharding)."""
        return sum(b.state_bytes() for bs in self._buckets.values() for b in bs)

    def workspace_bytes(self) -> int:
        """Bytes of the persistent gradient buffers (which `p.grad` then points into), as `state_bytes`."""
        return sum(b.workspace_bytes() for bs in self._buckets.values() for b in bs)

    def update_device(self, device) -> None:
        raise NotImplementedError(
            "optimized.HinaAdamWOptimizer keeps its state in flat buffers: build the optimizer after moving the model"
        )


CustomAdamW = HinaAdamWOptimizer
