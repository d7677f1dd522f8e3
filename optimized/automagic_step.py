"""The fused Automagic_CameAMP step over one partition of a bucket: compiled passes and small per-tensor math between.

The caller partitions a bucket's tensors by phase (seeding v, t < W/2, W/2 ≤ t < W, t ≥ W); almost always one
partition is the whole bucket. The phase is static (`Flags`), so no pass selects between phases per element.

1. `gradient_partials` (compiled, per bucket): per-tensor Σ|g| and Σg². The caller combines them per param
   group into S, μ, σ (a group may span several buckets).
2. `scaled_partials` (compiled): the reductions of the scaled gradient that the update needs first:
   Σu² for the RMS clip; in the early phase the TAM correlations (per-tensor ⟨m,u⟩, ‖m‖² when fixed;
   upstream: u itself, whose dim-0 column norms are then taken eagerly, kernels.column_normaliser).
3. `coefficients` (tiny tensor ops on [T]): the clip divisor, the TAM coefficient s (fixed), the
   adaptive weight-decay factor, beside the host's per-tensor numbers in float32 (`Coef`). Doing this
   outside the element loop keeps per-tensor math out of it.
4. `main_pass` (compiled): everything element-wise and the in-place writes of θ and every state. In
   the early phase it stops before the LR mask and θ, and hands over U with OrthoGrad's per-tensor
   ⟨θ,U⟩, ‖θ‖², ‖U‖²; ‖U⊥‖², then the mask and the θ update, follow as two more passes (`perp_sumsq`,
   `orthograd_apply`).

A state buffer is a plain tensor or, for the 8-bit class, a `codec.QState`: it is read through
`codec.load` (de-quantised in registers) and written through `codec.store` (re-quantised), so the same
passes serve both.

`PerTensor` ([T] float64 columns) comes from host-side counters (β1_t, δ^t, mask shifts), so no value is read
back from the device and a changing lr never recompiles. `Flags` are static: each combination is one graph per
pass, and a run sees a handful (seeding, early, late-warm, post).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from reference.orthograd import PARALLEL_TOL
from reference.roundoff_floor import floor_from_sum, floor_roundoff

from . import bitpack
from . import codec as C
from . import kernels as K
from .compile import compiled
from .shard_sums import over_ranks


class PerTensor(NamedTuple):
    """The host's per-tensor numbers, [T] float64 (tables.columns)."""

    member: torch.Tensor  # 1 for the tensors of this partition (read where Flags.masked)
    beta1_t: torch.Tensor
    one_minus_beta1_t: torch.Tensor
    alpha: torch.Tensor
    one_minus_alpha: torch.Tensor
    inv_bias_corr: torch.Tensor
    lr_shift: torch.Tensor
    post_scale: torch.Tensor
    clip_bound: torch.Tensor


class Coef(NamedTuple):
    """`coefficients`: the host's numbers and the device-computed ones, [T] float32."""

    host: PerTensor
    inv_div: torch.Tensor  # 1 / the RMS clip divisor
    tam_s: torch.Tensor  # TAM's s (fixed)
    wd_factor: torch.Tensor  # the adaptive weight-decay factor


class Consts(NamedTuple):
    """The group's settings, 0-d float64 (tables.constants)."""

    beta1: torch.Tensor
    one_minus_beta1: torch.Tensor
    beta2: torch.Tensor
    one_minus_beta2: torch.Tensor
    beta3: torch.Tensor
    one_minus_beta3: torch.Tensor
    eps1: torch.Tensor
    eps2: torch.Tensor
    clip: torch.Tensor
    weight_decay: torch.Tensor
    lr_bump: torch.Tensor
    min_lr: torch.Tensor
    max_lr: torch.Tensor
    floor_per_sum: torch.Tensor  # the round-off floor over S, ROUNDOFF_FLOOR / n (reference.roundoff_floor)


def _float(c: Consts) -> Consts:
    return Consts(*(x.float() for x in c))


class Flags(NamedTuple):
    """A partition's static switches: its phase (the same for all its tensors), the group's options, the class's
    variant. Each combination is one graph per pass."""

    came: bool
    fixed: bool
    seeding: bool  # t == 1 with CAME V1: the tensors only seed v
    early: bool  # t < W/2: TAM, OrthoGrad (else consistency momentum)
    warm: bool  # t < W: the mask moves (else it is frozen and rescaled)
    has_wd: bool
    has_rho: bool
    masked: bool  # the partition is not the whole bucket: rows are selected per tensor
    padding_safe: bool  # ε1, ε2 > 0: padding stays exactly 0 without masks
    # Automagic_CameAMP8bit (spec O2) where it differs from O1
    v2: bool = False  # T2 V2: v first, then u; no seeding step
    fresh_residual: bool = False  # [I-08] upstream: r is read as 0 and not stored; U = m ⊙ rsqrt(r)
    store_post_mask: bool = False  # T8b [I-10]: the scaled post-warm-up mask is stored
    # Automagic_CameAMP_COptim (spec O4): the momentum's input is the multi-scale C (T17) and E is
    # multiplied by Λ·ef (T16.6, T16.7); see `Context`
    contextual: bool = False


MULTISCALE_BETA = 0.9  # T17, hard-coded upstream


class Context(NamedTuple):
    """C-Optim's per-step inputs: the multi-scale momentum buffers μ_k (plain or QState) and [T] float32 columns."""

    scales: tuple
    use_u: torch.Tensor  # 1 where no μ_k is active yet, so the momentum's input is u
    factor: torch.Tensor  # Λ·ef
    weight_total: torch.Tensor  # Σ of the active 1/k
    update: tuple  # per scale k: 1 where t mod k == 0
    weight: tuple  # per scale k: 1/k once μ_k has been updated, else 0


class Buffers(NamedTuple):
    theta: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor | None
    exp_avg_res: torch.Tensor
    s: torch.Tensor | None  # [N, C] upstream; [T] fixed
    lr_mask: torch.Tensor
    polarity: torch.Tensor | None  # uint8 0/1, or bit-packed (8-bit buckets, see bitpack)
    row_factor: torch.Tensor | None  # ρ of every element's row (ALLoRA), [N, C] float32
    blocks: C.Blocks | None = None  # the block index of the QState buffers (8-bit states)
    context: Context | None = None  # C-Optim (Flags.contextual)


def _select(cond, new, old):
    return new if cond is None else torch.where(cond, new, old)


def _and(a, b):
    return b if a is None else a & b


def _member(coef: Coef | PerTensor, f: Flags):
    """The partition's tensors, [T] bool, or None where it is the whole bucket."""
    host = coef.host if isinstance(coef, Coef) else coef
    return host.member > 0 if f.masked else None


def _rows(cond, idx: K.Idx):
    """A per-tensor condition broadcast to the tensor's rows, [N, 1]."""
    return None if cond is None else cond[idx.chunk_tensor].view(-1, 1)


def _col(values: torch.Tensor, idx: K.Idx):
    """A per-tensor [T] value broadcast to the tensor's rows, [N, 1]."""
    return values[idx.chunk_tensor].view(-1, 1)


def _write(b: Buffers, name: str, value, cond, idx: K.Idx):
    """Store a state where `cond` ([T] bool, None = every tensor) holds; QState buffers are re-quantised
    with the padding zeroed, and keep the codes and absmax of the other tensors."""
    _write_buffer(b, getattr(b, name), value, cond, idx)


def _write_buffer(b: Buffers, buf, value, cond, idx: K.Idx):
    valid = K.valid_mask(idx) if isinstance(buf, C.QState) else None
    C.store(buf, value, b.blocks, _rows(cond, idx), cond, valid)


def _multiscale(b: Buffers, gt, idx: K.Idx):
    """T17: each μ_k after this step (μ_k ← 0.9μ_k + 0.1g̃ where t mod k == 0) and their 1/k-weighted mean
    C = Σ μ_k/k / Σ 1/k over the active scales. Returns (list of μ_k, C)."""
    ctx = b.context
    mus, weighted = [], 0.0
    for buf, update, weight in zip(ctx.scales, ctx.update, ctx.weight, strict=True):
        mu = C.load(buf, b.blocks).float()
        mu = torch.where(_col(update, idx) > 0, mu * MULTISCALE_BETA + gt * (1 - MULTISCALE_BETA), mu)
        mus.append(mu)
        weighted = weighted + mu * _col(weight, idx)
    return mus, weighted / _col(ctx.weight_total, idx)


def _momentum_input(b: Buffers, u, contextual_input, idx: K.Idx):
    """The input of TAM / consistency momentum: u, or C where a μ_k is active (C-Optim)."""
    return torch.where(_col(b.context.use_u, idx) > 0, u, contextual_input)


def _valid(f: Flags, idx: K.Idx):
    """The real elements ([N, C] bool), or None where padding stays 0 without a mask."""
    return None if f.padding_safe else K.valid_mask(idx)


def _load(b: Buffers, name: str):
    return C.load(getattr(b, name), b.blocks).float()


def _gradient_partials(grad: torch.Tensor, idx: K.Idx):
    a = grad.float().abs()
    return K.tensor_sum(a, idx), K.tensor_sum(a * a, idx)


def _agr(b: Buffers, consts: Consts, group_sum, f: Flags):
    """g̃ (T1a) of the gradient as the element-wise pipeline reads it: in the corrected mode an element at or below
    the round-off floor ROUNDOFF_FLOOR·S/n is 0 (reference.roundoff_floor)."""
    g = b.grad
    if f.fixed:
        g = floor_roundoff(g, floor_from_sum(group_sum.float(), consts.floor_per_sum.float()))
    return K.agr(g, group_sum.float(), 1e-12 if f.fixed else 0.0)


def _unclipped(b: Buffers, idx: K.Idx, clip_bound, consts: Consts, group_sum, f: Flags):
    """g̃ and the scaled gradient before the RMS clip (came; V2 from this step's v) or after the ADOPT
    clip (came=False; `clip_bound` [T])."""
    gt = _agr(b, consts, group_sum, f)
    if f.came and f.v2:
        c = _float(consts)
        u = K.came_unclipped(gt, K.second_moment(_load(b, "exp_avg_sq"), gt, c.beta2, c.one_minus_beta2, c.eps1))
    elif f.came:
        u = K.came_unclipped(gt, _load(b, "exp_avg_sq"))
    else:
        u = K.adopt_clip(gt, K.per_row(clip_bound, idx))
    return gt, _select(_valid(f, idx), u, 0.0)


def _scaled_partials(b: Buffers, idx: K.Idx, per_tensor: PerTensor, consts: Consts, group_sum, f: Flags, u_out):
    """Σu², and the early-phase TAM reductions, all of the *unclipped* u (written to u_out for
    upstream TAM, whose column norms are taken eagerly)."""
    gt, u = _unclipped(b, idx, per_tensor.clip_bound, consts, group_sum, f)
    out = {"uu": K.tensor_sum(u * u, idx)}
    if f.early:
        m = _load(b, "exp_avg")
        if f.contextual:  # the momentum's input where C is (see coefficients)
            _, c = _multiscale(b, gt, idx)
            c = _select(_valid(f, idx), c, 0.0)
        if f.fixed:
            out["mu"], out["mm"] = K.tensor_sum(m * u, idx), K.tensor_sum(m * m, idx)
            if f.contextual:
                out["mc"], out["cc"] = K.tensor_sum(m * c, idx), K.tensor_sum(c * c, idx)
        else:
            u_out.copy_(_momentum_input(b, u, c, idx) if f.contextual else u)
    return out


def coefficients(per_tensor: PerTensor, consts: Consts, partials, idx: K.Idx, s, abs_sum, mu, sigma, f: Flags,
                 use_u=None) -> Coef:  # fmt: skip
    """The host's numbers plus clip divisor, TAM s, WD factor, in float32. `use_u` ([T] bool, C-Optim): the
    tensors whose momentum input is u rather than C."""
    T = per_tensor.member.shape[0]
    inv_div = torch.ones(T, dtype=torch.float64, device=per_tensor.member.device)
    if f.came and not f.seeding:
        inv_div = 1.0 / K.rms_clip_divisor(partials["uu"], idx, consts.clip)
    tam_s = torch.zeros_like(inv_div)
    if f.early and f.fixed:
        # cos(m, u) with u = u_raw / div: ⟨m,u⟩ = ⟨m,u_raw⟩/div, ‖u‖ = ‖u_raw‖/div
        tam_s = K.tam_cosine_coefficient(
            s, partials["mu"] * inv_div, partials["mm"].sqrt(), partials["uu"].sqrt() * inv_div
        )
        if f.contextual:  # cos(m, C)
            tam_c = K.tam_cosine_coefficient(s, partials["mc"], partials["mm"].sqrt(), partials["cc"].sqrt())
            tam_s = torch.where(use_u, tam_s, tam_c)
    factor = torch.ones_like(inv_div)
    if f.has_wd:
        factor = K.decay_factor(abs_sum / idx.numel_t, mu, sigma, 1e-12 if f.fixed else 0.0)
    host = torch.stack(list(per_tensor), dim=1)
    table = torch.cat([host, torch.stack([inv_div, tam_s, factor], dim=1)], dim=1).float().unbind(1)
    return Coef(PerTensor(*table[: len(per_tensor)]), *table[len(per_tensor) :])


def _main_pass(b: Buffers, idx: K.Idx, coef: Coef, consts: Consts, group_sum, normaliser, f: Flags, update_out):
    """Everything element-wise. Returns, in the early phase, OrthoGrad's per-tensor sums of θ and U
    (kernels.orthograd_sums, taken as U is written); else the per-tensor sums of the new warm-up mask
    (8-bit states, see `_lr_and_mask`) or None."""
    c, h = _float(consts), coef.host
    member = _member(coef, f)
    valid = _valid(f, idx)

    gt, u = _unclipped(b, idx, h.clip_bound, consts, group_sum, f)
    if f.came:
        v_old = _load(b, "exp_avg_sq")
        if f.seeding:  # V1's first step only seeds v
            _write(b, "exp_avg_sq", v_old + (gt * gt + c.eps1), member, idx)
            return None
        u = u * _col(coef.inv_div, idx)
        v_new = K.second_moment(v_old, gt, c.beta2, c.one_minus_beta2, c.eps1)

    # T17 (C-Optim): the momentum's input x is the multi-scale C, else u
    x = u
    if f.contextual:
        mus, contextual_input = _multiscale(b, gt, idx)
        x = _momentum_input(b, u, contextual_input, idx)

    # T4a / T5: momentum
    m = _load(b, "exp_avg")
    if f.early and f.fixed:
        m_new = m_bar = K.tam_cosine(m, x, _col(coef.tam_s, idx), c.eps1)
    elif f.early:
        m_new, s_new = K.tam_upstream(m, _load(b, "s"), x, normaliser, c.eps1)
        m_bar = m_new
    else:
        m_new, m_bar = K.consistency(m, x, _col(h.beta1_t, idx), _col(h.one_minus_beta1_t, idx), c.beta1,
                                     c.one_minus_beta1)  # fmt: skip

    # T3 residual, T6 Grams (T7a OrthoGrad runs in its own passes, see fused_step)
    if f.fresh_residual:  # [I-08] r is read as 0, and U = m ⊙ rsqrt(r) has no + ε2
        r_new = K.residual(torch.zeros_like(m), u, m_bar, c.beta3, c.one_minus_beta3, c.eps2)
        update = m_new * r_new.rsqrt()
    else:
        r_new = K.residual(_load(b, "exp_avg_res"), u, m_bar, c.beta3, c.one_minus_beta3, c.eps2)
        update = K.residual_direction(m_new, r_new, c.eps2, _col(h.inv_bias_corr, idx) if f.fixed else None)
    update = _select(valid, K.grams_blend(update, gt, _col(h.alpha, idx), _col(h.one_minus_alpha, idx)), 0.0)

    # T8 LR mask and the θ update; in the early phase OrthoGrad needs per-tensor reductions of U
    # first, so U is handed over with its projection sums and both follow in `orthograd_apply`
    if f.early:
        update_out.copy_(update)
        result = K.orthograd_sums(b.theta, update_out, idx)
    else:
        lr_eff, result = _lr_and_mask(b, gt, coef, c, member, idx, f)
        _apply_update(b, update, lr_eff, coef, _rows(member, idx), c, idx, f)

    # state writes (the other partitions' tensors keep their values)
    _write(b, "exp_avg", m_new, member, idx)
    if not f.fresh_residual:
        _write(b, "exp_avg_res", r_new, member, idx)
    if f.came:
        _write(b, "exp_avg_sq", v_new, member, idx)
    if f.early and not f.fixed:
        _write(b, "s", s_new, member, idx)
    if f.contextual:
        for buf, mu, update in zip(b.context.scales, mus, b.context.update, strict=True):  # where t mod k = 0
            _write_buffer(b, buf, mu, _and(member, update > 0), idx)
    return result


def _lr_and_mask(b: Buffers, gt, coef: Coef, c: Consts, member, idx: K.Idx, f: Flags):
    """E: the warm-up mask update (T8a, or T8b without the lr_max shift) or, after warm-up, the mask
    rescaled by max(η/lr_max, 0.1), times ρ (T9a). Stores the warm-up mask and polarity (T8b: also the
    rescaled mask). Returns (E, per-tensor Σ of the new warm-up mask for 8-bit states, else None): the
    mean of the mask *before* quantisation is avg_lr."""
    mask = _load(b, "lr_mask")
    mask_sums = None
    if f.warm:
        packed = bitpack.is_packed(b.polarity, idx.lanes.shape[-1])
        last_polarity = bitpack.unpack(b.polarity) if packed else b.polarity
        lr_eff, polarity = K.warmup_mask(mask, gt, last_polarity, _col(coef.host.lr_shift, idx), c.lr_bump, c.min_lr,
                                         c.max_lr)  # fmt: skip
        rows = _rows(member, idx)
        polarity = polarity if rows is None else C.select_bytes(rows, polarity, last_polarity)
        b.polarity.copy_(bitpack.pack(polarity) if packed else polarity)
        if isinstance(b.lr_mask, C.QState):
            mask_sums = K.tensor_sum(torch.where(K.valid_mask(idx), lr_eff, 0.0), idx)
    else:
        lr_eff = K.post_warmup_mask(mask, _col(coef.host.post_scale, idx))
    if f.warm or f.store_post_mask:  # (before the C-Optim factor, as the reference)
        _write(b, "lr_mask", lr_eff, member, idx)
    if f.contextual:  # T16.6, T16.7: E ← E·Λ·ef
        lr_eff = lr_eff * _col(b.context.factor, idx)
    if f.has_rho:
        lr_eff = lr_eff * b.row_factor
    return lr_eff, mask_sums


def _apply_update(b: Buffers, update, lr_eff, coef: Coef, rows, c: Consts, idx: K.Idx, f: Flags):
    """T10 adaptive weight decay (rounded to the parameter dtype, as the in-place upstream op is), then
    θ ← θ − U ⊙ E; rows of the other partitions keep their values. θ is updated in its own precision
    where that is wider than fp32 (fp64 θ, as the reference's in-place ops on p)."""
    theta = K.at_least_fp32(b.theta)
    kept = theta
    if f.has_wd:
        theta = K.apply_decay(theta, lr_eff, c.weight_decay, _col(coef.wd_factor, idx)).to(b.theta.dtype)
        theta = theta.to(kept.dtype)
    b.theta.copy_(_select(rows, theta - update * lr_eff, kept))


def _perp_sumsq(theta, update, proj, idx: K.Idx):
    perp = K.orthograd_perp(theta, update, K.per_row(proj, idx))
    return K.tensor_sum(perp * perp, idx)


def _orthograd_apply(b: Buffers, idx: K.Idx, coef: Coef, consts: Consts, group_sum, update, proj, scale, keep,
                     f: Flags):  # fmt: skip
    """T7a (where U is not parallel to θ), then the LR mask, the weight decay and the θ update. Returns as
    `main_pass`."""
    c = _float(consts)
    theta = b.theta.float()
    orth = K.orthograd_perp(theta, update, K.per_row(proj, idx)) * K.per_row(scale, idx)
    update = torch.where(K.per_row(keep.double(), idx) == 0, orth, update)
    member = _member(coef, f)
    gt = _agr(b, consts, group_sum, f)
    lr_eff, mask_sums = _lr_and_mask(b, gt, coef, c, member, idx, f)
    _apply_update(b, update, lr_eff, coef, _rows(member, idx), c, idx, f)
    return mask_sums


gradient_partials = compiled(_gradient_partials)
scaled_partials = compiled(_scaled_partials, stores_states=False)  # (u_out is scratch)
main_pass = compiled(_main_pass)
perp_sumsq = compiled(_perp_sumsq)
orthograd_apply = compiled(_orthograd_apply)


def fused_step(b: Buffers, layout, idx: K.Idx, per_tensor: PerTensor, consts: Consts, group_sum, mu, sigma, abs_sum,
               f: Flags, scratch, shards=None):  # fmt: skip
    """One step of one partition of a bucket (its tensors share a phase, `Flags`); mutates the buffers in place.
    Returns the per-tensor sums of the new warm-up mask when the mask is stored 8-bit (else None).

    `scratch(name)` gives a persistent [N, C] float32 buffer of the bucket: the early phase hands
    U (and, for upstream TAM, u) between passes through them rather than through fresh allocations,
    which cost a page fault per 4 KiB on CPU. `shards` (optimized.shard_sums, FSDP2 shards): every
    per-tensor sum a pass returns is summed over the ranks before it is used.
    """

    partials = {}
    upstream_tam = f.early and not f.fixed
    u_out = scratch("u") if upstream_tam else None
    if not f.seeding and (f.came or f.early):
        partials = scaled_partials(b, idx, per_tensor, consts, group_sum, f, u_out)
        partials = dict(zip(partials, over_ranks(shards, *partials.values()), strict=True))
    use_u = b.context.use_u > 0 if f.contextual else None
    coef = coefficients(per_tensor, consts, partials, idx, b.s, abs_sum, mu, sigma, f, use_u)
    if upstream_tam:  # dim-0 normalisation, written over the momentum's input (u, unclipped, or C)
        m = _load(b, "exp_avg")
        inv_div = coef.inv_div.double()
        if f.contextual:
            inv_div = torch.where(use_u, inv_div, 1.0)
        K.column_normaliser(m, u_out, inv_div, layout, out=u_out, shards=shards)
    update = scratch("update") if f.early else None
    mask_sums = main_pass(b, idx, coef, consts, group_sum, u_out, f, update)
    if update is not None:
        proj, nu, keep = K.orthograd_projection_of(*over_ranks(shards, *mask_sums))
        (perp,) = over_ranks(shards, perp_sumsq(b.theta, update, proj, idx))
        scale = K.orthograd_scale(nu, perp, PARALLEL_TOL if f.fixed else 0.0)
        mask_sums = orthograd_apply(b, idx, coef, consts, group_sum, update, proj, scale, keep, f)
    if mask_sums is not None:
        (mask_sums,) = over_ranks(shards, mask_sums)
    if f.early and f.fixed:
        b.s.copy_(_select(_member(per_tensor, f), coef.tam_s, b.s))
    return mask_sums
