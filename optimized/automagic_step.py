"""The fused Automagic_CameAMP step over one bucket, in two compiled stages.

stage 1 (`gradient_partials`): per-tensor Σ|g| and Σg², combined per param group on the host side
    (tensor ops, no sync) into S, μ, σ, since a group may span several buckets (dtypes, devices).
stage 2 (`fused_step`): everything else, mutating the bucket's buffers in place.

Per-tensor scalars that depend on the step counter (β1_t, δ^t, mask shifts, phase flags) arrive in
`per_tensor` ([T, NCOLS] float64, built on the host from host-side counters), so no value is read back
from the device and a changing lr never triggers a recompile. `Flags` are static: each combination
is one compiled graph, and a run sees a handful (seed, early, late-warm, post).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import kernels as K
from .compile import compiled

# columns of the per-tensor scalar table
ACTIVE, SEED, EARLY, WARM, BETA1_T, ONE_MINUS_BETA1_T, ALPHA, ONE_MINUS_ALPHA, BIAS_CORR, LR_SHIFT, \
    POST_SCALE, CLIP_BOUND, WD_ON = range(13)  # fmt: skip
NCOLS = 13

# entries of the group constant vector
(BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, BETA3, ONE_MINUS_BETA3, EPS1, EPS2, CLIP, WD, LR_BUMP,
 MIN_LR, MAX_LR, ETA_TERM) = range(14)  # fmt: skip
NCONST = 14


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
    masked: bool  # rows must be selected per tensor (inactive tensors or mixed phases)


class Buffers(NamedTuple):
    theta: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor | None
    exp_avg_res: torch.Tensor
    s: torch.Tensor | None  # [N, C] upstream; [T] fixed
    lr_mask: torch.Tensor
    polarity: torch.Tensor | None
    row_scaling: torch.Tensor | None  # [nrows + 1] table


def _gradient_partials(grad: torch.Tensor, idx: K.Idx):
    a = grad.float().abs()
    return K.tensor_sum(a, idx), K.tensor_sum(a * a, idx)


def _select(cond, new, old):
    return new if cond is None else torch.where(cond, new, old)


def _fused_step(b: Buffers, idx: K.Idx, per_tensor, consts, group_sum, mu, sigma, abs_sum, f: Flags):
    c = consts.float()
    eps_guard = 1e-12 if f.fixed else 0.0
    valid = K.valid_mask(idx)

    def col(k):
        return K.per_row(per_tensor[:, k], idx)

    active = col(ACTIVE) > 0 if f.masked else None
    seed = col(SEED) > 0 if (f.has_seed and f.has_update) else None
    upd = active if seed is None else (~seed if active is None else active & ~seed)
    early = col(EARLY) > 0 if (f.has_early and f.has_late) else None
    warm = col(WARM) > 0 if (f.has_warm and f.has_post) else None

    theta = b.theta.float()
    gt = K.agr(b.grad, group_sum.float(), eps_guard)
    if f.came:
        v_old = b.exp_avg_sq.float()
        seeded = v_old + (gt * gt + c[EPS1])
    if not f.has_update:  # every active tensor only seeds v
        b.exp_avg_sq.copy_(_select(active, seeded, v_old))
        return

    # T2: scaled gradient u
    if f.came:
        u = torch.where(valid, K.came_unclipped(gt, v_old), 0.0)
        div = K.rms_clip_divisor(K.tensor_sum(u * u, idx), idx, consts[CLIP])
        u = u / K.per_row(div, idx)
        v_new = K.second_moment(v_old, gt, c[BETA2], c[ONE_MINUS_BETA2], c[EPS1])
    else:
        u = torch.where(valid, K.adopt_clip(gt, col(CLIP_BOUND)), 0.0)

    # T4a / T5: momentum
    m = b.exp_avg.float()
    if f.has_early:
        if f.fixed:
            s_new = K.tam_cosine_coefficient(
                b.s, K.tensor_sum(m * u, idx), K.tensor_sum(m * m, idx).sqrt(), K.tensor_sum(u * u, idx).sqrt()
            )
            m_tam = K.tam_cosine(m, u, K.per_row(s_new, idx), c[EPS1])
        else:
            m_tam, s_new = K.tam_upstream(
                m, b.s, u, K.column_sumsq(m, idx).sqrt(), K.column_sumsq(u, idx).sqrt(), c[EPS1]
            )
    if f.has_late:
        m_con, m_bar_con = K.consistency(
            m, u, col(BETA1_T), col(ONE_MINUS_BETA1_T), c[BETA1], c[ONE_MINUS_BETA1]
        )
    if f.has_early and f.has_late:
        m_new, m_bar = torch.where(early, m_tam, m_con), torch.where(early, m_tam, m_bar_con)
    elif f.has_early:
        m_new = m_bar = m_tam
    else:
        m_new, m_bar = m_con, m_bar_con

    # T3 residual, T6 Grams, T7a OrthoGrad
    r_new = K.residual(b.exp_avg_res, u, m_bar, c[BETA3], c[ONE_MINUS_BETA3], c[EPS2])
    update = K.residual_direction(m_new, r_new, c[EPS2], col(BIAS_CORR))
    update = torch.where(valid, K.grams_blend(update, gt, col(ALPHA), col(ONE_MINUS_ALPHA)), 0.0)
    if f.has_early:
        update = _select(early, K.orthograd(theta, update, idx), update)

    # T8a LR mask
    if f.has_warm:
        mask_warm, polarity = K.warmup_mask(
            b.lr_mask, gt, b.polarity, col(LR_SHIFT), c[LR_BUMP], c[MIN_LR], c[MAX_LR]
        )
    lr_eff = mask_warm if f.has_warm else None
    if f.has_post:
        lr_eff = _select(warm, mask_warm, K.post_warmup_mask(b.lr_mask, col(POST_SCALE))) if f.has_warm else \
            K.post_warmup_mask(b.lr_mask, col(POST_SCALE))  # fmt: skip

    # T9a ALLoRA rows (the table is recomputed from the current rows when fixed)
    if f.has_rho:
        table = b.row_scaling
        if f.fixed:
            table = K.allora_table(K.row_norms(theta, idx, table), c[ETA_TERM])
            b.row_scaling.copy_(table)
        lr_eff = lr_eff * K.gather_rows(table, idx)

    # T10 adaptive weight decay, rounded to the parameter dtype as the in-place upstream op is
    if f.has_wd:
        factor = K.decay_factor(abs_sum / idx.numel_t, mu, sigma, eps_guard)
        decayed = K.apply_decay(theta, lr_eff, c[WD], K.per_row(factor, idx)).to(b.theta.dtype).float()
        theta = torch.where(col(WD_ON) > 0, decayed, theta)

    # θ ← θ − U ⊙ E, and the state writes (rows of inactive or seeding tensors keep their values)
    b.theta.copy_(_select(upd, theta - update * lr_eff, b.theta.float()))
    b.exp_avg.copy_(_select(upd, m_new, m))
    b.exp_avg_res.copy_(_select(upd, r_new, b.exp_avg_res.float()))
    if f.came:
        v_store = v_new if seed is None else torch.where(seed, seeded, v_new)
        b.exp_avg_sq.copy_(_select(active, v_store, v_old))
    if f.has_early:
        if f.fixed:
            tensor_upd = per_tensor[:, ACTIVE] * (1 - per_tensor[:, SEED]) * per_tensor[:, EARLY] > 0
            b.s.copy_(torch.where(tensor_upd, s_new.float(), b.s))
        else:
            b.s.copy_(_select(_and(upd, early), s_new, b.s.float()))
    if f.has_warm:
        cond = _and(upd, warm)
        b.lr_mask.copy_(_select(cond, mask_warm, b.lr_mask))
        b.polarity.copy_(_select(cond, polarity, b.polarity))


def _and(a, b):
    if a is None:
        return b
    return a if b is None else a & b


gradient_partials = compiled(_gradient_partials)
fused_step = compiled(_fused_step)
