"""Technique cases: each reference function against the optimized kernel that computes the same thing.

A case takes a generator and a list of shapes, runs the reference per tensor and the optimized kernel
on all tensors packed into one chunked buffer (the stack classes' kernels: on the tensors of each shape
stacked), and returns (name, reference, optimized) triples, or quadruples whose last entry is the magnitude
of the terms the value sums (tolerances.scaled_error: where a sum cancels, its own size understates its
rounding; TAM's s = γ·s + (1 − γ)·C does when C ≈ −γ·s/(1 − γ)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from optimized import hina_step, improved8_step, improved_step, seed004_step
from optimized import kernels as K
from reference import (
    adabelief_residual,
    adaptive_weight_decay,
    agr,
    came_style,
    cautious,
    edge_suppression,
    lr_mask,
    spatial_awareness,
    spd,
    tam,
)
from reference.allora import allora_row_scaling
from reference.consistency_momentum import consistency_momentum, decayed_beta1
from reference.frequency_penalty import fft_penalty, finite_difference_penalty
from reference.grams import grams_alpha, grams_blend
from reference.low_rank_penalty import approximate_penalty, exact_svd_penalty, tail_nuclear_gradient
from reference.orthograd import PARALLEL_TOL, orthograd

from .packing import Packed


@dataclass(frozen=True)
class TechniqueCase:
    name: str
    technique: str  # spec id (techniques.md)
    paper: str  # key in papers/index.json
    reference: str  # dotted name of the reference function
    optimized: str  # dotted name of the optimized kernel
    run: object


def _randn(gen, shape, scale=1.0):
    return torch.randn(shape, generator=gen) * scale


def _positive(gen, shape):
    return torch.rand(shape, generator=gen) + 0.05


def _stacks(tensors_by_kind, shapes):
    """The stack classes' layout: the tensors of each distinct shape stacked [c, *shape], as (indices, stacks)."""
    order = {}
    for i, s in enumerate(shapes):
        order.setdefault(tuple(s), []).append(i)
    for indices in order.values():
        yield indices, [torch.stack([kind[i] for i in indices]) for kind in tensors_by_kind]


def run_agr(gen, shapes):
    grads = [_randn(gen, s) for s in shapes]
    S = agr.group_abs_sum(grads)
    P = Packed(grads)
    out = P.unpack(K.agr(P.pack(grads), S, 0.0))
    return [("g̃", agr.agr(g, S), o) for g, o in zip(grads, out, strict=True)]


def run_came_scale(gen, shapes):
    grads = [_randn(gen, s) for s in shapes]
    vs = [_positive(gen, s) * 1e-2 for s in shapes]
    beta2, eps1, clip = 0.99, 1e-30, 1.0
    ref = [came_style.scale_v1(g, v, beta2, eps1, clip) for g, v in zip(grads, vs, strict=True)]
    P = Packed(grads)
    g, v = P.pack(grads), P.pack(vs, padding=1.0)
    u = K.came_unclipped(g, v)
    inv_div = 1.0 / K.rms_clip_divisor(K.tensor_sum(u * u, P.idx), P.idx, torch.tensor(clip, dtype=torch.float64))
    u = P.unpack(u * K.per_row(inv_div, P.idx))
    v_new = P.unpack(K.second_moment(v, g, torch.tensor(beta2), 1 - beta2, eps1))
    out = []
    for (ru, rv), ou, ov in zip(ref, u, v_new, strict=True):
        out += [("u", ru, ou), ("v", rv, ov)]
    return out


def run_came_scale_v3(gen, shapes):
    """T2 V3 (the Improved classes): both clip forms (Improved; seed 004's S2o and Improved_8Bit take the
    plain one)."""
    grads = [_randn(gen, s) for s in shapes]
    vs = [_positive(gen, s) * 1e-2 for s in shapes]
    eps1, clip = 1e-30, 0.7
    out = []
    for indices, (g, v) in _stacks([grads, vs], shapes):
        for improved_clip in (True, False):
            u, v_new = improved_step.scale_v3(g, v, eps1, clip, improved_clip)
            for k, i in enumerate(indices):
                ru, rv = came_style.scale_v3(grads[i], vs[i], eps1, clip, improved_clip)
                out += [("u", ru, u[k]), ("v", rv, v_new[k])]
    return out


def run_adopt_clip(gen, shapes):
    grads = [_randn(gen, s, 3.0) for s in shapes]
    steps = [int(torch.randint(1, 200, (), generator=gen)) for _ in shapes]
    P = Packed(grads)
    out = P.unpack(K.adopt_clip(P.pack(grads), P.rows([t**0.25 for t in steps])))
    return [("u", came_style.adopt_clip(g, t), o) for g, t, o in zip(grads, steps, out, strict=True)]


def run_residual(gen, shapes):
    us, ms, mbars = ([_randn(gen, s) for s in shapes] for _ in range(3))
    rs = [_positive(gen, s) * 1e-3 for s in shapes]
    beta3, eps2 = 0.999, 1e-16
    P = Packed(us)
    r = K.residual(P.pack(rs, padding=1.0), P.pack(us), P.pack(mbars), torch.tensor(beta3), 1 - beta3, eps2)
    U = K.residual_direction(P.pack(ms), r, eps2, P.rows([1.0] * len(shapes)))
    out = []
    for u, m, mb, r0, orr, oU in zip(us, ms, mbars, rs, P.unpack(r), P.unpack(U), strict=True):
        rr = adabelief_residual.update_residual(r0, u, mb, beta3, eps2)
        out += [("r", rr, orr), ("U", adabelief_residual.residual_direction(m, rr, eps2), oU)]
    return out


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).reshape(())


def _tam_terms(m0, s0, x0, corr, gamma, s_used, eps1, beta=0.9):
    """The terms' magnitudes of TAM's s = γ·s0 + (1 − γ)·C and m = β·m0 + ((1 + s_used)/2 + ε1)·x0."""
    s_terms = gamma * s0.abs() + (1 - gamma) * corr.abs()
    return s_terms, beta * m0.abs() + (((1 + s_used) / 2 + eps1) * x0).abs()


def run_tam_upstream(gen, shapes):
    ms, xs = [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]
    ss = [_randn(gen, s, 0.1) for s in shapes]
    P = Packed(ms)
    m, x = P.pack(ms), P.pack(xs)
    w = K.column_normaliser(m, x, torch.ones(len(shapes), dtype=torch.float64), P.layout)
    om, os_ = K.tam_upstream(m, P.pack(ss), x, w, 1e-30)
    out = []
    for m0, s0, x0, a, b in zip(ms, ss, xs, P.unpack(om), P.unpack(os_), strict=True):
        rm, rs = tam.tam_upstream(m0, s0, x0, 1e-30)
        corr = tam.normalize_dim0(m0) * tam.normalize_dim0(x0)
        s_terms, m_terms = _tam_terms(m0, s0, x0, corr, tam.TAM_DECAY, rs, 1e-30)
        out += [("m", rm, a, m_terms), ("s", rs, b, s_terms)]
    return out


def run_tam_cosine(gen, shapes):
    ms, xs = [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]
    ss = [torch.rand((), generator=gen) * 2 - 1 for _ in shapes]
    P = Packed(ms)
    m, x = P.pack(ms), P.pack(xs)
    s_new = K.tam_cosine_coefficient(
        torch.stack(ss), K.tensor_sum(m * x, P.idx), K.tensor_sum(m * m, P.idx).sqrt(),
        K.tensor_sum(x * x, P.idx).sqrt(),
    )  # fmt: skip
    om = P.unpack(K.tam_cosine(m, x, K.per_row(s_new, P.idx), 1e-30))
    out = []
    for i, (m0, s0, x0) in enumerate(zip(ms, ss, xs, strict=True)):
        rm, rs = tam.tam_cosine(m0, s0, x0, 1e-30)
        s_terms = tam.TAM_DECAY * s0.abs() + (1 - tam.TAM_DECAY) * _cos(m0, x0).abs()
        m_terms = 0.9 * m0.abs() + 0.1 * (((1 + rs) / 2 + 1e-30) * x0).abs()
        out += [("m", rm, om[i], m_terms), ("s", rs, s_new[i].float(), s_terms)]
    return out


def _ms_xs(gen, shapes):
    return [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]


def run_tam_damping(gen, shapes):
    """T4e (HinaAdamW): m_t = β1·m + (1 − β1)·g, the per-tensor sums of the fused pass, then the factor and A
    with bias correction (fixed) and without (upstream)."""
    ms, gs = [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]
    old = torch.rand(len(shapes), generator=gen) * 2 - 1
    steps = torch.randint(1, 40, (len(shapes),), generator=gen)
    beta1, tam_beta = 0.9, 0.9
    P = Packed(ms)
    T = len(shapes)
    ones, zeros = torch.ones(T), torch.zeros(T)
    tab = hina_step.PerTensor(ones, ones, zeros, zeros, ones, ones, zeros)
    consts = hina_step.group_constants({"betas": (beta1, 0.999), "eps": 1e-8}, None, "cpu")
    flags = hina_step.Flags(stale=False, floor=False, roundoff=False, orthogonal=False, tam=True, grams=False,
                            cautious=False, masked=False, padding_safe=True)  # fmt: skip
    m, g = P.pack(ms), P.pack(gs)
    buffers = hina_step.Buffers(torch.zeros_like(m), g, m, torch.ones_like(m), None)
    dot, mm, gg = hina_step.tam_sums(buffers, tab, P.idx, consts, flags)
    out = []
    for correction in (None, (1 - tam_beta ** steps.double()).float()):
        factor, alignment = hina_step.tam_factor(dot, mm, gg, old.clone(), tam_beta, correction)
        for i, (m0, g0) in enumerate(zip(ms, gs, strict=True)):
            m_t = m0 * beta1 + g0 * (1 - beta1)
            bias = 1.0 if correction is None else 1 - tam_beta ** int(steps[i])
            rf, ra = tam.tam_damping(m_t, g0, old[i], tam_beta, bias)
            a_terms = tam_beta * old[i].abs() + (1 - tam_beta)
            factor_terms = (1 + a_terms / bias) / 2
            out += [("A", torch.as_tensor(ra).float(), alignment[i], a_terms),
                    ("(1 + Â)/2", torch.as_tensor(rf).float(), factor[i].float(), factor_terms)]  # fmt: skip
    return out


def run_tam_improved(gen, shapes, fixed=False):
    """T4b. Upstream: an element-wise s, the emphasis stored; the correlation switches to the global cosine at
    10,000 elements. Fixed: a per-tensor cosine s, the emphasis on a clamped copy, m ← β·m + (1 − β)·d."""
    ms, xs = _ms_xs(gen, shapes)
    ss = [torch.rand((), generator=gen) * 2 - 1 if fixed else _randn(gen, s, 0.1) for s in shapes]
    gamma, eps1, emphasis, beta = 0.9, 1e-30, 1.25, tam.IMPROVED_TAM_BETA
    out = []
    for indices, (m, s, x) in _stacks([ms, ss, xs], shapes):
        om, os_ = improved_step.tam(m, s, x, gamma, eps1, emphasis, m.dim() - 1, fixed=fixed)
        for k, i in enumerate(indices):
            m0, s0, x0 = ms[i], ss[i], xs[i]
            if fixed:
                rm, rs = tam.tam_improved_fixed(m0, s0, x0, gamma, eps1, emphasis)
                s_terms = gamma * s0.abs() + (1 - gamma) * _cos(m0, x0).abs()
                s_used, d_weight = (rs * emphasis).clamp(-1, 1), 1 - beta
            else:
                rm, rs = tam.tam_improved(m0, s0, x0, gamma, eps1, emphasis)
                corr = tam.fast_correlation(m0, x0).reshape(rs.shape)
                s_terms = emphasis * (gamma * s0.abs() + (1 - gamma) * corr.abs())
                s_used, d_weight = rs, 1.0
            m_terms = beta * m0.abs() + d_weight * (((1 + s_used) / 2 + eps1) * x0).abs()
            out += [("m", rm, om[k], m_terms), ("s", rs, os_[k], s_terms)]
    return out


def run_tam_s2o(gen, shapes):
    """T4b, S2o: the dim-0 normalised product, the emphasis on a copy."""
    (ms, xs), ss = _ms_xs(gen, shapes), [_randn(gen, s, 0.1) for s in shapes]
    eps1, emphasis = 1e-30, 1.25
    out = []
    for indices, (m, s, x) in _stacks([ms, ss, xs], shapes):
        om, os_ = seed004_step.tam_s2o(m, s, x, eps1, emphasis, m.dim() - 1)
        for k, i in enumerate(indices):
            rm, rs = tam.tam_s2o(ms[i], ss[i], xs[i], eps1, emphasis)
            corr = tam.normalize_dim0(ms[i]) * tam.normalize_dim0(xs[i])
            s_terms, m_terms = _tam_terms(ms[i], ss[i], xs[i], corr, tam.TAM_DECAY, emphasis * rs, eps1)
            out += [("m", rm, om[k], m_terms), ("s", rs, os_[k], s_terms)]
    return out


def _t4c(ndim: int, fixed: bool, polarity: bool):
    flags = dict.fromkeys(improved8_step.Flags._fields, False) | dict(ndim=ndim, dtype=torch.float32)
    flags = improved8_step.Flags(**flags | dict(fixed=fixed, warm=True, polarity=polarity))
    consts = improved8_step.Consts(**dict.fromkeys(improved8_step.Consts._fields, 0.0) | dict(adaptation_rate=0.8))
    return flags, consts


def run_tam_as_update(gen, shapes):
    """T4c, upstream: the state is the direction itself; κ from the stored polarity (absent at t = 1)."""
    ms, us = _ms_xs(gen, shapes)
    ss = [_randn(gen, s, 0.1) for s in shapes]
    pols = [torch.rand(s, generator=gen) > 0.5 for s in shapes]
    out = []
    for indices, (m, u, s, pol) in _stacks([ms, us, ss, pols], shapes):
        for polarity in (False, True):
            flags, consts = _t4c(m.dim() - 1, fixed=False, polarity=polarity)
            st = {"s": s.clone(), "last_polarity": pol.clone()}
            direction = improved8_step.tam_direction(st, m, u, None, flags, consts)
            for k, i in enumerate(indices):
                a = consts.adaptation_rate
                rs, rp = tam.tam_as_update(ms[i], ss[i], us[i], a, pols[i] if polarity else None)
                corr = tam.normalize_dim0(ms[i]) * tam.normalize_dim0(us[i])
                terms = a * ss[i].abs() + (1 - a) * corr.abs()
                out += [("U", rs, direction[k], terms), ("polarity", rp, st["last_polarity"][k])]
    return out


def run_tam_as_update_fixed(gen, shapes):
    """T4c corrected: a per-tensor cosine s damps the momentum step."""
    ms, us = _ms_xs(gen, shapes)
    ss = [torch.rand((), generator=gen) * 2 - 1 for _ in shapes]
    out = []
    for indices, (m, u, s) in _stacks([ms, us, ss], shapes):
        flags, consts = _t4c(m.dim() - 1, fixed=True, polarity=False)
        st = {"s": s.clone()}
        direction = improved8_step.tam_direction(st, m, u, None, flags, consts)
        for k, i in enumerate(indices):
            a = consts.adaptation_rate
            rU, rs = tam.tam_as_update_fixed(ms[i], ss[i], us[i], a)
            s_terms = a * ss[i].abs() + (1 - a) * _cos(ms[i], us[i]).abs()
            out += [("U", rU, direction[k]), ("s", rs, st["s"][k], s_terms)]
    return out


def run_consistency(gen, shapes):
    ms, xs = [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]
    steps = [int(torch.randint(1, 3000, (), generator=gen)) for _ in shapes]
    beta1, decay = 0.8, 0.9995
    b1t = [decayed_beta1(beta1, decay, t) for t in steps]
    P = Packed(ms)
    om, omb = K.consistency(P.pack(ms), P.pack(xs), P.rows(b1t), P.rows([1 - b for b in b1t]), beta1, 1 - beta1)
    out = []
    for m0, x0, bt, a, b in zip(ms, xs, b1t, P.unpack(om), P.unpack(omb), strict=True):
        rm, rmb = consistency_momentum(m0, x0, beta1, bt)
        m_terms = bt * m0.abs() + (1 - bt) * x0.abs()
        out += [("m", rm, a, m_terms), ("m̄", rmb, b, beta1 * rm.abs() + (1 - beta1) * x0.abs())]
    return out


def run_grams(gen, shapes):
    us, gs = [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]
    alphas = [grams_alpha(0.9995, int(torch.randint(1, 3000, (), generator=gen))) for _ in shapes]
    P = Packed(us)
    out = P.unpack(K.grams_blend(P.pack(us), P.pack(gs), P.rows(alphas), P.rows([1 - a for a in alphas])))
    # U = α·|U|·sign(g) + (1 − α)·U: terms of |U| in all
    return [("U", grams_blend(u, g, a), o, u) for u, g, a, o in zip(us, gs, alphas, out, strict=True)]


def run_orthograd(gen, shapes):
    thetas, us = [_randn(gen, s) for s in shapes], [_randn(gen, s) for s in shapes]
    P = Packed(thetas)
    out = P.unpack(K.orthograd(P.pack(thetas), P.pack(us), P.idx))
    # a one-element U is parallel to θ: upstream's U⊥ is rounding noise rescaled to ‖U‖ (reference.orthograd), so
    # its value depends on the CPU's rounding (exactly 0 with ATEN_CPU_CAPABILITY=default); only its norm is defined
    return [("U⊥", orthograd(t, u), o) if t.numel() > 1 else ("‖U⊥‖ ≤ ‖U‖", u.norm(), torch.maximum(o.norm(), u.norm()))
            for t, u, o in zip(thetas, us, out, strict=True)]  # fmt: skip


def run_orthograd_stacks(gen, shapes, fixed):
    """T7a on stacks (the Improved family's early phase): upstream, and corrected (zeros where U is parallel to θ
    within PARALLEL_TOL, as a one-element U always is)."""
    thetas, us = _ms_xs(gen, shapes)
    out = []
    for indices, (theta, u) in _stacks([thetas, us], shapes):
        fast = improved_step.orthograd(theta, u, fixed)
        for k, i in enumerate(indices):
            ref = orthograd(thetas[i], us[i], PARALLEL_TOL if fixed else 0.0)
            if fixed or thetas[i].numel() > 1:
                out.append(("U⊥", ref, fast[k]))
            else:  # upstream's U⊥ of a one-element U is rounding noise rescaled (see run_orthograd)
                out.append(("‖U⊥‖ ≤ ‖U‖", us[i].norm(), torch.maximum(fast[k].norm(), us[i].norm())))
    return out


def run_cautious(gen, shapes, background):
    """T12 (φ = 1[U ⊙ u' > 0] / max(mean φ, 1e-3)) with T22 (halved where var(u') < 1e-6) on stacks. Every other
    tensor's u' is scaled to 1e-5, so both sides of T22's test are met (variances ~1e-10 and ~1)."""
    updates = [_randn(gen, s) for s in shapes]
    xs = [_randn(gen, s, 1e-5 if i % 2 else 1.0) for i, s in enumerate(shapes)]
    out = []
    for indices, (update, x) in _stacks([updates, xs], shapes):
        fast = improved_step.cautious(update, x, background)
        for k, i in enumerate(indices):
            ref = cautious.cautious_mask(updates[i], xs[i])
            if background:
                ref = ref * spatial_awareness.background_factor(xs[i])
            out.append(("U", ref, fast[k]))
    return out


def run_spd_step(gen, shapes):
    """T11a/T11b: θ̃ = θ − U, θ̃ − λ·r·(θ̃ − θ0) with r = hardtanh((‖θ̃ − θ0‖ − ‖θ − θ0‖)/(‖θ̃ − θ0‖ + 1e-8), 0, 1), on
    stacks; the S2 and S2o forms differ in operation order only. θ0 is near θ, so r lies inside (0, 1)."""
    thetas, updates = _ms_xs(gen, shapes)
    anchors = [t + _randn(gen, t.shape, 0.1) for t in thetas]
    decay = 0.3
    out = []
    for indices, (theta, update, anchor) in _stacks([thetas, updates, anchors], shapes):
        fast = improved_step.spd_step(theta, update, anchor, torch.tensor(decay))
        for k, i in enumerate(indices):
            new_theta = thetas[i] - updates[i]
            terms = new_theta.abs() + decay * (new_theta - anchors[i]).abs()  # θ̃ − λ·r·(θ̃ − θ0), r ≤ 1
            for ref in (spd.spd_step, spd.spd_step_s2o):
                out.append(("θ", ref(thetas[i], updates[i], anchors[i], decay), fast[k], terms))
    return out


def run_suppress_update(gen, shapes, full):
    """T20 U2: eh ← 0.9·eh + 0.1·E_0.6(U), U ← U ⊙ clamp(1 − penalty·eh, 0.1, 1), per tensor of a stack; the
    "full" Laplacian (seed 004, Improved_8Bit) or the "optimized" one (Improved: matrices only)."""
    updates = [_randn(gen, s) for s in shapes]
    histories = [_positive(gen, s) for s in shapes]
    penalty, variant = 0.5, "full" if full else "optimized"
    out = []
    for indices, (update, history) in _stacks([updates, histories], shapes):
        fast_u, fast_h = improved_step.suppress_update(update, history, penalty, update.dim() - 1, full)
        for k, i in enumerate(indices):
            ref_u, ref_h = edge_suppression.suppress_update(updates[i], histories[i], penalty, variant)
            out += [("U", ref_u, fast_u[k]), ("eh", ref_h, fast_h[k])]
    return out


def run_lr_mask(gen, shapes):
    grads = [_randn(gen, s) for s in shapes]
    masks = [torch.full(s, 1e-4) + _randn(gen, s, 1e-5) for s in shapes]
    pols = [torch.rand(s, generator=gen) > 0.5 for s in shapes]
    lr, bump, lo, hi = 2e-4, 3e-6, 1e-7, 1e-3
    lr_maxes = [1e-6 if i % 2 else 3e-4 for i in range(len(shapes))]
    P = Packed(grads)
    shift = [lr - m if lr > m else 0.0 for m in lr_maxes]
    om, op = K.warmup_mask(P.pack(masks), P.pack(grads), P.pack(pols, torch.uint8), P.rows(shift), bump, lo, hi)
    scale = [max(lr / m, 0.1) if lr < m else 1.0 for m in lr_maxes]
    opost = K.post_warmup_mask(P.pack(masks), P.rows(scale))
    out = []
    for i, (g, m0, p0) in enumerate(zip(grads, masks, pols, strict=True)):
        agree, rp = lr_mask.polarity_agreement(g, p0)
        rm, _ = lr_mask.warmup_lr_mask(m0, agree, lr, lr_maxes[i], bump, lo, hi)
        rpost, _ = lr_mask.post_warmup_lr_mask(m0, lr, lr_maxes[i])
        out += [("M (warm-up)", rm, P.unpack(om)[i]), ("polarity", rp, P.unpack(op)[i].bool()),
                ("E (post)", rpost, P.unpack(opost)[i])]  # fmt: skip
    return out


def run_allora(gen, shapes):
    thetas = [_randn(gen, s) for s in shapes]
    P = Packed(thetas)
    theta = P.pack(thetas)
    table = K.allora_table(K.row_norms(theta, P.layout), 1.0 / 2.0**2)
    rho = P.unpack(K.expand_rows(table, P.layout, P.layout.empty(torch.float32, "cpu")))
    out = []
    for t, r in zip(thetas, rho, strict=True):
        if t.dim() == 2:
            out.append(("ρ", allora_row_scaling(t, 2.0).expand_as(t), r))
        else:
            out.append(("ρ (not 2-D: 1)", torch.ones_like(t), r))
    return out


def run_adaptive_wd(gen, shapes):
    grads = [_randn(gen, s, float(torch.rand((), generator=gen)) + 0.1) for s in shapes]
    thetas = [_randn(gen, s) for s in shapes]
    lrs = [torch.full(s, 1e-3) for s in shapes]
    mu, sigma = adaptive_weight_decay.group_abs_stats(grads)
    P = Packed(grads)
    abs_mean = K.tensor_sum(P.pack(grads).abs(), P.idx) / P.idx.numel_t
    factor = K.decay_factor(abs_mean, mu.double(), sigma.double(), 0.0)
    decayed = P.unpack(K.apply_decay(P.pack(thetas), P.pack(lrs), 0.05, K.per_row(factor, P.idx)))
    out = []
    for i, (g, t, e) in enumerate(zip(grads, thetas, lrs, strict=True)):
        rf = adaptive_weight_decay.decay_factor(g, mu, sigma)
        out += [("ϑ", rf, factor[i].float()),
                ("θ", adaptive_weight_decay.apply_weight_decay(t, e, 0.05, rf), decayed[i])]  # fmt: skip
    return out


def _matrix_stacks(gen, shapes):
    """A matrix for each shape (the penalties below act on matrices only): [s0, s1·s2·…], 0-d and 1-D as one row;
    as (matrices, stacks)."""
    matrices = [_randn(gen, (s[0], math.prod(s[1:])) if len(s) > 1 else (1, math.prod(s))) for s in shapes]
    return matrices, list(_stacks([matrices], [m.shape for m in matrices]))


RANK_PENALTY_FORMS = {"fixed": tail_nuclear_gradient, "exact": exact_svd_penalty, "approximate": approximate_penalty}


def run_rank_penalty(gen, shapes, form):
    reference_form = RANK_PENALTY_FORMS[form]
    matrices, stacks = _matrix_stacks(gen, shapes)
    out = []
    for indices, (stack,) in stacks:
        fast = improved_step.rank_penalty(stack, 0.3, form)
        # the exact form is U·diag(k·S)·Vh, k·θ to rounding: terms of k·|θ|
        out += [("P", reference_form(matrices[i], 0.3), fast[j], 0.3 * matrices[i].abs())
                for j, i in enumerate(indices)]  # fmt: skip
    return out


def run_fft_penalty(gen, shapes):
    matrices, stacks = _matrix_stacks(gen, shapes)
    out = []
    for indices, (stack,) in stacks:
        fast = seed004_step.stack_fft_penalty(stack)
        out += [("P", fft_penalty(matrices[i]), fast[j]) for j, i in enumerate(indices)]
    return out


def run_laplacian(gen, shapes):
    """T20's Laplacian over the last two dims (zeros where one is < 3); a 0-d or 1-D shape as one row."""
    shapes = [s if len(s) >= 2 else (1, math.prod(s)) for s in shapes]
    tensors = [_randn(gen, s) for s in shapes]
    out = []
    for indices, (stack,) in _stacks([tensors], shapes):
        fast = improved_step.laplacian(stack)
        out += [("L", edge_suppression.laplacian(tensors[i], "full"), fast[j]) for j, i in enumerate(indices)]
    return out


def run_finite_difference(gen, shapes):
    """T21b's finite-difference penalty of each matrix (zeros where a dim is < 2)."""
    matrices, stacks = _matrix_stacks(gen, shapes)
    out = []
    for indices, (stack,) in stacks:
        fast = improved_step.finite_difference_penalty(stack, 2)
        out += [("R", finite_difference_penalty(matrices[i]), fast[j]) for j, i in enumerate(indices)]
    return out


def _case(name, technique, paper, ref, opt, run):
    return TechniqueCase(name, technique, paper, ref, opt, run)


TECHNIQUE_CASES = [
    _case("AGR (group sum)", "T1a", "agr", "reference.agr.agr", "optimized.kernels.agr", run_agr),
    _case("CAME-style scaling + RMS clip (V1)", "T2", "adafactor", "reference.came_style.scale_v1",
          "optimized.kernels.came_unclipped", run_came_scale),
    _case("CAME-style scaling + RMS clip (V3)", "T2", "adafactor", "reference.came_style.scale_v3",
          "optimized.improved_step.scale_v3", run_came_scale_v3),
    _case("ADOPT clip (came=False)", "T2", "adopt", "reference.came_style.adopt_clip",
          "optimized.kernels.adopt_clip", run_adopt_clip),
    _case("AdaBelief residual", "T3", "adabelief", "reference.adabelief_residual.update_residual",
          "optimized.kernels.residual", run_residual),
    _case("TAM (upstream, dim-0 product)", "T4a", "tam", "reference.tam.tam_upstream",
          "optimized.kernels.tam_upstream", run_tam_upstream),
    _case("TAM (fixed, scalar cosine)", "T4a", "tam", "reference.tam.tam_cosine",
          "optimized.kernels.tam_cosine", run_tam_cosine),
    _case("TAM (Improved, upstream)", "T4b", "tam", "reference.tam.tam_improved", "optimized.improved_step.tam",
          run_tam_improved),
    _case("TAM (Improved, fixed)", "T4b", "tam", "reference.tam.tam_improved_fixed",
          "optimized.improved_step.tam", partial(run_tam_improved, fixed=True)),
    _case("TAM damping (HinaAdamW)", "T4e", "tam", "reference.tam.tam_damping", "optimized.hina_step.tam_factor",
          run_tam_damping),
    _case("TAM (S2o)", "T4b", "tam", "reference.tam.tam_s2o", "optimized.seed004_step.tam_s2o", run_tam_s2o),
    _case("TAM as the update direction (upstream)", "T4c", "tam", "reference.tam.tam_as_update",
          "optimized.improved8_step.tam_direction", run_tam_as_update),
    _case("TAM as the update direction (fixed)", "T4c", "tam", "reference.tam.tam_as_update_fixed",
          "optimized.improved8_step.tam_direction", run_tam_as_update_fixed),
    _case("Consistency momentum", "T5", "consistency", "reference.consistency_momentum.consistency_momentum",
          "optimized.kernels.consistency", run_consistency),
    _case("Grams blend", "T6", "grams", "reference.grams.grams_blend", "optimized.kernels.grams_blend",
          run_grams),
    _case("OrthoGrad", "T7a", "orthograd", "reference.orthograd.orthograd", "optimized.kernels.orthograd",
          run_orthograd),
    _case("OrthoGrad (stacks, upstream)", "T7a", "orthograd", "reference.orthograd.orthograd",
          "optimized.improved_step.orthograd", partial(run_orthograd_stacks, fixed=False)),
    _case("OrthoGrad (stacks, corrected)", "T7a", "orthograd", "reference.orthograd.orthograd",
          "optimized.improved_step.orthograd", partial(run_orthograd_stacks, fixed=True)),
    _case("Automagic LR mask", "T8a", "automagic", "reference.lr_mask.warmup_lr_mask",
          "optimized.kernels.warmup_mask", run_lr_mask),
    _case("ALLoRA row scaling", "T9a", "allora", "reference.allora.allora_row_scaling",
          "optimized.kernels.allora_table", run_allora),
    _case("Adaptive weight decay", "T10", "adadecay", "reference.adaptive_weight_decay.decay_factor",
          "optimized.kernels.decay_factor", run_adaptive_wd),
    _case("Cautious mask (Improved)", "T12", "cautious", "reference.cautious.cautious_mask",
          "optimized.improved_step.cautious", partial(run_cautious, background=False)),
    _case("Cautious mask with the background test", "T22", "improved_regularisers",
          "reference.spatial_awareness.background_factor", "optimized.improved_step.cautious",
          partial(run_cautious, background=True)),
    _case("SPD step (Improved, S2 and S2o)", "T11a", "spd", "reference.spd.spd_step",
          "optimized.improved_step.spd_step", run_spd_step),
    *(_case(f"Edge suppression of the update ({variant} Laplacian)", "T20", "improved_regularisers",
            "reference.edge_suppression.suppress_update", "optimized.improved_step.suppress_update",
            partial(run_suppress_update, full=variant == "full")) for variant in ("optimized", "full")),
    _case("Laplacian edge penalty", "T20", "improved_regularisers", "reference.edge_suppression.laplacian",
          "optimized.improved_step.laplacian", run_laplacian),
    _case("Finite-difference frequency penalty", "T21b", "improved_regularisers",
          "reference.frequency_penalty.finite_difference_penalty", "optimized.improved_step.finite_difference_penalty",
          run_finite_difference),
    _case("FFT frequency penalty", "T21a", "improved_regularisers", "reference.frequency_penalty.fft_penalty",
          "optimized.seed004_step.stack_fft_penalty", run_fft_penalty),
    _case("Low-rank penalty (corrected: tail nuclear-norm gradient)", "T24", "improved_regularisers",
          "reference.low_rank_penalty.tail_nuclear_gradient", "optimized.improved_step.rank_penalty",
          partial(run_rank_penalty, form="fixed")),
    _case("Low-rank penalty (exact, upstream: k·θ)", "T24", "improved_regularisers",
          "reference.low_rank_penalty.exact_svd_penalty", "optimized.improved_step.rank_penalty",
          partial(run_rank_penalty, form="exact")),
    _case("Low-rank penalty (approximate, upstream)", "T24", "improved_regularisers",
          "reference.low_rank_penalty.approximate_penalty", "optimized.improved_step.rank_penalty",
          partial(run_rank_penalty, form="approximate")),
]  # fmt: skip
