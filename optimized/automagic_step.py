"""The fused Automagic_CameAMP step over one bucket: compiled passes and small per-tensor math between.

1. `gradient_partials` (compiled): per-tensor Σ|g| and Σg². The caller combines them per param group
   into S, μ, σ (a group may span several buckets).
2. `scaled_partials` (compiled): the reductions of the scaled gradient that the update needs first:
   Σu² for the RMS clip; in the early phase the TAM correlations (per-tensor ⟨m,u⟩, ‖m‖² when fixed;
   upstream: u itself, whose dim-0 column norms are then taken eagerly, kernels.column_normaliser).
3. `coefficients` (tiny tensor ops on [T]): the clip divisor, the TAM coefficient s (fixed), the
   adaptive weight-decay factor, gathered with the host-built per-tensor table into one float32
   [T, K] table. Doing this outside the element loop keeps per-tensor math out of it.
4. `main_pass` (compiled): everything element-wise and the in-place writes of θ and every state. In
   the early phase it stops before the LR mask and θ and hands U over; OrthoGrad's per-tensor
   reductions, the mask and the θ update follow as three more small passes (`orthograd_partials`,
   `perp_sumsq`, `orthograd_apply`).

A state buffer is a plain tensor or, for the 8-bit class, a `codec.QState`: it is read through
`codec.load` (de-quantised in registers) and written through `codec.store` (re-quantised), so the same
passes serve both.

`per_tensor` ([T, NCOLS] float64) comes from host-side counters (β1_t, δ^t, mask shifts, phase flags),
so no value is read back from the device and a changing lr never recompiles. `Flags` are static: each
combination is one graph per pass, and a run sees a handful (seed, early, late-warm, post).
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

# columns of the per-tensor table (host part, then the device-computed part)
(ACTIVE, SEED, EARLY, WARM, BETA1_T, ONE_MINUS_BETA1_T, ALPHA, ONE_MINUS_ALPHA, INV_BIAS_CORR, LR_SHIFT,
 POST_SCALE, CLIP_BOUND, WD_ON) = range(13)  # fmt: skip
NCOLS = 13
INV_DIV, TAM_S, WD_FACTOR = range(NCOLS, NCOLS + 3)

# entries of the group constant vector
(BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, BETA3, ONE_MINUS_BETA3, EPS1, EPS2, CLIP, WD, LR_BUMP,
 MIN_LR, MAX_LR, ETA_TERM, FLOOR_PER_SUM) = range(15)  # fmt: skip
NCONST = 15  # FLOOR_PER_SUM: the round-off floor over S, ROUNDOFF_FLOOR / n (reference.roundoff_floor)


class Flags(NamedTuple):
    came: bool
    fixed: bool
    has_seed: bool  # some tensor seeds v this step (t == 1, came)
    has_update: bool  # some tensor takes a full step
    has_early: bool  # t < W/2: TAM, OrthoGrad
    has_late: bool  # t ≥ W/2: consistency momentum
    has_warm: bool  # t < W: mask update
    has_post: bool  # t ≥ W: frozen mask
    has_wd: bool
    has_rho: bool
    masked: bool  # rows must be selected per tensor (inactive tensors)
    padding_safe: bool  # ε1, ε2 > 0: padding stays exactly 0 without masks
    # Automagic_CameAMP8bit (spec O2) where it differs from O1
    v2: bool = False  # T2 V2: v first, then u; no seeding step
    fresh_residual: bool = False  # [I-08] upstream: r is read as 0 and not stored; U = m ⊙ rsqrt(r)
    store_post_mask: bool = False  # T8b [I-10]: the scaled post-warm-up mask is stored
    # Automagic_CameAMP_COptim (spec O4): the momentum's input is the multi-scale C (T17) and E is
    # multiplied by Λ·ef (T16.6, T16.7); see `Context`
    contextual: bool = False


# columns of Context.coef; then, per momentum scale k, UPDATE_K (t mod k == 0) and WEIGHT_K (1/k once
# μ_k has been updated, else 0)
USE_U, CONTEXT_FACTOR, WEIGHT_TOTAL, FIRST_SCALE_COL = range(4)
MULTISCALE_BETA = 0.9  # T17, hard-coded upstream


class Context(NamedTuple):
    """C-Optim's per-step inputs: the multi-scale momentum buffers μ_k (plain or QState) and a float32
    [T, 3 + 2K] table: USE_U (1 where no μ_k is active yet, so the input is u), Λ·ef, Σ of the active
    1/k, and the per-scale columns."""

    scales: tuple
    coef: torch.Tensor


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
    if a is None:
        return b
    return a if b is None else a & b


class Conds(NamedTuple):
    """Per-tensor [T] bool conditions (None: true for every tensor), from the coefficient table."""

    active: torch.Tensor | None
    seed: torch.Tensor | None
    upd: torch.Tensor | None  # active and not seeding: takes a full step
    early: torch.Tensor | None
    warm: torch.Tensor | None


def _conds(coef, f: Flags) -> Conds:
    active = coef[:, ACTIVE] > 0 if f.masked else None
    seed = coef[:, SEED] > 0 if (f.has_seed and f.has_update) else None
    upd = active if seed is None else (~seed if active is None else active & ~seed)
    early = coef[:, EARLY] > 0 if (f.has_early and f.has_late) else None
    warm = coef[:, WARM] > 0 if (f.has_warm and f.has_post) else None
    return Conds(active, seed, upd, early, warm)


def _rows(cond, idx: K.Idx):
    """A per-tensor condition broadcast to the tensor's rows, [N, 1]."""
    return None if cond is None else cond[idx.chunk_tensor].view(-1, 1)


def _write(b: Buffers, name: str, value, cond, idx: K.Idx):
    """Store a state where `cond` ([T] bool, None = every tensor) holds; QState buffers are re-quantised
    with the padding zeroed, and keep the codes and absmax of the other tensors."""
    _write_buffer(b, getattr(b, name), value, cond, idx)


def _write_buffer(b: Buffers, buf, value, cond, idx: K.Idx):
    valid = K.valid_mask(idx) if isinstance(buf, C.QState) else None
    C.store(buf, value, b.blocks, _rows(cond, idx), cond, valid)


def _context_col(b: Buffers, idx: K.Idx, k: int):
    return b.context.coef[idx.chunk_tensor, k].view(-1, 1)


def _multiscale(b: Buffers, gt, idx: K.Idx):
    """T17: each μ_k after this step (μ_k ← 0.9μ_k + 0.1g̃ where t mod k == 0) and their 1/k-weighted mean
    C = Σ μ_k/k / Σ 1/k over the active scales. Returns (list of μ_k, C)."""
    mus, weighted = [], 0.0
    for j, buf in enumerate(b.context.scales):
        mu = C.load(buf, b.blocks)
        update = _context_col(b, idx, FIRST_SCALE_COL + 2 * j) > 0
        mu = torch.where(update, mu * MULTISCALE_BETA + gt * (1 - MULTISCALE_BETA), mu)
        mus.append(mu)
        weighted = weighted + mu * _context_col(b, idx, FIRST_SCALE_COL + 2 * j + 1)
    return mus, weighted / _context_col(b, idx, WEIGHT_TOTAL)


def _momentum_input(b: Buffers, u, contextual_input, idx: K.Idx):
    """The input of TAM / consistency momentum: u, or C where a μ_k is active (C-Optim)."""
    return torch.where(_context_col(b, idx, USE_U) > 0, u, contextual_input)


def _valid(f: Flags, idx: K.Idx):
    """The real elements ([N, C] bool), or None where padding stays 0 without a mask."""
    return None if f.padding_safe else K.valid_mask(idx)


def _load(b: Buffers, name: str):
    return C.load(getattr(b, name), b.blocks)


def _gradient_partials(grad: torch.Tensor, idx: K.Idx):
    a = grad.float().abs()
    return K.tensor_sum(a, idx), K.tensor_sum(a * a, idx)


def _agr(b: Buffers, consts, group_sum, f: Flags):
    """g̃ (T1a) of the gradient as the element-wise pipeline reads it: in the corrected mode an element at or below
    the round-off floor ROUNDOFF_FLOOR·S/n is 0 (reference.roundoff_floor)."""
    g = b.grad
    if f.fixed:
        g = floor_roundoff(g, floor_from_sum(group_sum.float(), consts[FLOOR_PER_SUM].float()))
    return K.agr(g, group_sum.float(), 1e-12 if f.fixed else 0.0)


def _unclipped(b: Buffers, idx: K.Idx, per_tensor, consts, group_sum, f: Flags):
    """g̃ and the scaled gradient before the RMS clip (came; V2 from this step's v) or after the ADOPT
    clip (came=False)."""
    gt = _agr(b, consts, group_sum, f)
    if f.came and f.v2:
        c = consts.float()
        u = K.came_unclipped(gt, K.second_moment(_load(b, "exp_avg_sq"), gt, c[BETA2], c[ONE_MINUS_BETA2], c[EPS1]))
    elif f.came:
        u = K.came_unclipped(gt, _load(b, "exp_avg_sq"))
    else:
        u = K.adopt_clip(gt, K.per_row(per_tensor[:, CLIP_BOUND], idx))
    return gt, _select(_valid(f, idx), u, 0.0)


def _scaled_partials(b: Buffers, idx: K.Idx, per_tensor, consts, group_sum, f: Flags, u_out):
    """Σu², and the early-phase TAM reductions, all of the *unclipped* u (written to u_out for
    upstream TAM, whose column norms are taken eagerly)."""
    gt, u = _unclipped(b, idx, per_tensor, consts, group_sum, f)
    out = {"uu": K.tensor_sum(u * u, idx)}
    if f.has_early:
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


def coefficients(per_tensor, consts, partials, idx: K.Idx, s, abs_sum, mu, sigma, f: Flags, use_u=None):
    """Per-tensor [T, NCOLS + 3] float32 table: the host columns plus clip divisor, TAM s, WD factor.
    `use_u` ([T] bool, C-Optim): the tensors whose momentum input is u rather than C."""
    T = per_tensor.shape[0]
    inv_div = torch.ones(T, dtype=torch.float64, device=per_tensor.device)
    if f.came and f.has_update:
        inv_div = 1.0 / K.rms_clip_divisor(partials["uu"], idx, consts[CLIP])
    tam_s = torch.zeros_like(inv_div)
    if f.has_early and f.fixed:
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
    return torch.cat([per_tensor, torch.stack([inv_div, tam_s, factor], dim=1)], dim=1).float()


def _main_pass(b: Buffers, idx: K.Idx, coef, consts, group_sum, normaliser, f: Flags, update_out):
    """Everything element-wise; returns the per-tensor sums of the new warm-up mask (8-bit states, see
    `_lr_and_mask`) or None."""
    c = consts.float()

    def col(k):
        return coef[idx.chunk_tensor, k].view(-1, 1)

    cond = _conds(coef, f)
    seed = _rows(cond.seed, idx)
    early = _rows(cond.early, idx)
    valid = _valid(f, idx)

    gt, u = _unclipped(b, idx, coef, consts, group_sum, f)
    if f.came:
        v_old = _load(b, "exp_avg_sq")
        seeded = v_old + (gt * gt + c[EPS1])
        if not f.has_update:  # every active tensor only seeds v
            _write(b, "exp_avg_sq", seeded, cond.active, idx)
            return None
        u = u * col(INV_DIV)
        v_new = K.second_moment(v_old, gt, c[BETA2], c[ONE_MINUS_BETA2], c[EPS1])

    # T17 (C-Optim): the momentum's input x is the multi-scale C, else u
    x = u
    if f.contextual:
        mus, contextual_input = _multiscale(b, gt, idx)
        x = _momentum_input(b, u, contextual_input, idx)

    # T4a / T5: momentum
    m = _load(b, "exp_avg")
    if f.has_early:
        if f.fixed:
            m_tam = K.tam_cosine(m, x, col(TAM_S), c[EPS1])
        else:
            m_tam, s_new = K.tam_upstream(m, _load(b, "s"), x, normaliser, c[EPS1])
    if f.has_late:
        m_con, m_bar_con = K.consistency(m, x, col(BETA1_T), col(ONE_MINUS_BETA1_T), c[BETA1], c[ONE_MINUS_BETA1])
    if f.has_early and f.has_late:
        m_new, m_bar = torch.where(early, m_tam, m_con), torch.where(early, m_tam, m_bar_con)
    elif f.has_early:
        m_new = m_bar = m_tam
    else:
        m_new, m_bar = m_con, m_bar_con

    # T3 residual, T6 Grams (T7a OrthoGrad runs in its own passes, see fused_step)
    if f.fresh_residual:  # [I-08] r is read as 0, and U = m ⊙ rsqrt(r) has no + ε2
        r_new = K.residual(torch.zeros_like(m), u, m_bar, c[BETA3], c[ONE_MINUS_BETA3], c[EPS2])
        update = m_new * r_new.rsqrt()
    else:
        r_new = K.residual(_load(b, "exp_avg_res"), u, m_bar, c[BETA3], c[ONE_MINUS_BETA3], c[EPS2])
        update = K.residual_direction(m_new, r_new, c[EPS2], col(INV_BIAS_CORR) if f.fixed else None)
    update = _select(valid, K.grams_blend(update, gt, col(ALPHA), col(ONE_MINUS_ALPHA)), 0.0)

    # T8 LR mask and the θ update; in the early phase OrthoGrad needs per-tensor reductions of U
    # first, so U is handed over and both follow in `orthograd_apply`
    mask_sums = None
    if f.has_early:
        update_out.copy_(update)
    else:
        lr_eff, mask_sums = _lr_and_mask(b, gt, col, c, cond, idx, f)
        _apply_update(b, update, lr_eff, col, _rows(cond.upd, idx), c, f)

    # state writes (tensors that are inactive or seeding keep their values)
    _write(b, "exp_avg", m_new, cond.upd, idx)
    if not f.fresh_residual:
        _write(b, "exp_avg_res", r_new, cond.upd, idx)
    if f.came:
        v_store = v_new if seed is None else torch.where(seed, seeded, v_new)
        _write(b, "exp_avg_sq", v_store, cond.active, idx)
    if f.has_early and not f.fixed:
        _write(b, "s", s_new, _and(cond.upd, cond.early), idx)
    if f.contextual:
        for j, (buf, mu) in enumerate(zip(b.context.scales, mus, strict=True)):  # updated: active, t mod k = 0
            _write_buffer(b, buf, mu, b.context.coef[:, FIRST_SCALE_COL + 2 * j] > 0, idx)
    return mask_sums


def _lr_and_mask(b: Buffers, gt, col, c, cond: Conds, idx: K.Idx, f: Flags):
    """E: the warm-up mask update (T8a, or T8b without the lr_max shift) or, after warm-up, the mask
    rescaled by max(η/lr_max, 0.1), times ρ (T9a). Stores the warm-up mask and polarity (T8b: also the
    rescaled mask). Returns (E, per-tensor Σ of the new warm-up mask for 8-bit states, else None): the
    mean of the mask *before* quantisation is avg_lr."""
    c_warm = _rows(cond.warm, idx)
    mask = _load(b, "lr_mask")
    if f.has_warm:
        packed = bitpack.is_packed(b.polarity, idx.lanes.shape[-1])
        last_polarity = bitpack.unpack(b.polarity) if packed else b.polarity
        mask_warm, polarity = K.warmup_mask(mask, gt, last_polarity, col(LR_SHIFT), c[LR_BUMP], c[MIN_LR], c[MAX_LR])
    if f.has_post:
        mask_post = K.post_warmup_mask(mask, col(POST_SCALE))
        lr_eff = _select(c_warm, mask_warm, mask_post) if f.has_warm else mask_post
    else:
        lr_eff = mask_warm
    if f.store_post_mask:  # (before the C-Optim factor, as the reference)
        _write(b, "lr_mask", lr_eff, cond.upd, idx)
    elif f.has_warm:
        _write(b, "lr_mask", mask_warm, _and(cond.upd, cond.warm), idx)
    mask_sums = None
    if f.has_warm:
        moved = _rows(_and(cond.upd, cond.warm), idx)
        polarity = _select(moved, polarity, last_polarity)
        b.polarity.copy_(bitpack.pack(polarity) if packed else polarity)
        if isinstance(b.lr_mask, C.QState):
            mask_sums = K.tensor_sum(torch.where(K.valid_mask(idx), mask_warm, 0.0), idx)
    if f.contextual:  # T16.6, T16.7: E ← E·Λ·ef
        lr_eff = lr_eff * _context_col(b, idx, CONTEXT_FACTOR)
    if f.has_rho:
        lr_eff = lr_eff * b.row_factor
    return lr_eff, mask_sums


def _apply_update(b: Buffers, update, lr_eff, col, upd, c, f: Flags):
    """T10 adaptive weight decay (rounded to the parameter dtype, as the in-place upstream op is), then
    θ ← θ − U ⊙ E; rows of inactive or seeding tensors keep their values. θ is updated in its own precision
    where that is wider than fp32 (fp64 θ, as the reference's in-place ops on p)."""
    theta = K.at_least_fp32(b.theta)
    kept = theta
    if f.has_wd:
        decayed = K.apply_decay(theta, lr_eff, c[WD], col(WD_FACTOR)).to(b.theta.dtype).to(theta.dtype)
        theta = torch.where(col(WD_ON) > 0, decayed, theta)
    b.theta.copy_(_select(upd, theta - update * lr_eff, kept))


def _orthograd_partials(theta, update, idx: K.Idx):
    return K.orthograd_projection(theta, update, idx)


def _perp_sumsq(theta, update, proj, idx: K.Idx):
    perp = K.orthograd_perp(theta, update, K.per_row(proj, idx))
    return K.tensor_sum(perp * perp, idx)


def _orthograd_apply(b: Buffers, idx: K.Idx, coef, consts, group_sum, update, proj, scale, keep, f: Flags):
    """T7a on the early rows, then the LR mask, the weight decay and the θ update. Returns as `main_pass`."""
    c = consts.float()

    def col(k):
        return coef[idx.chunk_tensor, k].view(-1, 1)

    theta = b.theta.float()
    orth = K.orthograd_perp(theta, update, K.per_row(proj, idx)) * K.per_row(scale, idx)
    use = (col(EARLY) > 0) & (K.per_row(keep.double(), idx) == 0)
    update = torch.where(use, orth, update)
    cond = _conds(coef, f)
    gt = _agr(b, consts, group_sum, f)
    lr_eff, mask_sums = _lr_and_mask(b, gt, col, c, cond, idx, f)
    _apply_update(b, update, lr_eff, col, _rows(cond.upd, idx), c, f)
    return mask_sums


gradient_partials = compiled(_gradient_partials)
scaled_partials = compiled(_scaled_partials, stores_states=False)  # (u_out is scratch)
main_pass = compiled(_main_pass)
orthograd_partials = compiled(_orthograd_partials)
perp_sumsq = compiled(_perp_sumsq)
orthograd_apply = compiled(_orthograd_apply)


def fused_step(b: Buffers, layout, idx: K.Idx, per_tensor, consts, group_sum, mu, sigma, abs_sum, f: Flags,
               scratch):  # fmt: skip
    """One step of one bucket; mutates the buffers in place. Returns the per-tensor sums of the new
    warm-up mask when the mask is stored 8-bit (else None).

    `scratch(name)` gives a persistent [N, C] float32 buffer of the bucket: the early phase hands
    U (and, for upstream TAM, u) between passes through them rather than through fresh allocations,
    which cost a page fault per 4 KiB on CPU.
    """
    partials = {}
    upstream_tam = f.has_update and f.has_early and not f.fixed
    u_out = scratch("u") if upstream_tam else None
    if f.has_update and (f.came or f.has_early):
        partials = scaled_partials(b, idx, per_tensor, consts, group_sum, f, u_out)
    use_u = b.context.coef[:, USE_U] > 0 if f.contextual else None
    coef = coefficients(per_tensor, consts, partials, idx, b.s, abs_sum, mu, sigma, f, use_u)
    if upstream_tam:  # dim-0 normalisation, written over the momentum's input (u, unclipped, or C)
        m = C.load(b.exp_avg, b.blocks)
        inv_div = coef[:, INV_DIV].double()
        if f.contextual:
            inv_div = torch.where(use_u, inv_div, 1.0)
        K.column_normaliser(m, u_out, inv_div, layout, out=u_out)
    update = scratch("update") if f.has_early and f.has_update else None
    mask_sums = main_pass(b, idx, coef, consts, group_sum, u_out, f, update)
    if update is not None:
        proj, nu, keep = orthograd_partials(b.theta, update, idx)
        scale = K.orthograd_scale(nu, perp_sumsq(b.theta, update, proj, idx), PARALLEL_TOL if f.fixed else 0.0)
        mask_sums = orthograd_apply(b, idx, coef, consts, group_sum, update, proj, scale, keep, f)
    if f.has_early and f.fixed:
        tensor_upd = per_tensor[:, ACTIVE] * (1 - per_tensor[:, SEED]) * per_tensor[:, EARLY] > 0
        b.s.copy_(torch.where(tensor_upd, coef[:, TAM_S], b.s))
    return mask_sums
