"""Automagic_CameAMP_Improved_8Bit's step (spec O7) on a stack of same-shape tensors, with its 8-bit states
read and written through bitsandbytes' blockwise dynamic codec (optimized.stack_codec) inside the graph.

As in improved_step, `x[i]` is tensor i of the stack and a per-tensor reduction is a reduction over every
dim but the first. Where the reference combines a tensor with a 0-d per-tensor value (κ, var U, ϑ), the
stack uses a [c, 1, …] column, which promotes a bf16 tensor to fp32 where the 0-d value did not; the result
is cast back, so upstream bf16 rounds as the reference does. `stack_step` is compiled as one graph per
`Flags` and shape class and writes θ and every state in place. The FFT penalty (seed004_step's opaque op)
and OrthoGrad (improved_step's) run eagerly inside the graph; the rank penalty's batched SVD and the random
walk's noise (drawn from the optimizer's generator, tensor by tensor) come in as inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from reference.adaptive_weight_decay import ADA_ALPHA
from reference.automagic_cameamp_improved_8bit import ADAPTIVE_WD_EPS, AGR_EPS, CONSISTENCY_GAIN
from reference.lr_mask import RANDOM_WALK_MAX_STEP, RANDOM_WALK_STD, ROW_FACTOR_RANGE

from . import stack_codec as codec
from .compile import compiled
from .improved_step import edge_penalty, floored, per, rows, stack_orthograd
from .seed004_step import fft_penalty, normalize_dim0
from .stack_state import load, store


class Flags(NamedTuple):
    """Static switches of `stack_step`: one graph per combination."""

    ndim: int  # the parameters' ndim (the stack has one more)
    dtype: torch.dtype  # the state dtype: g and θ are taken in it
    fixed: bool
    came: bool  # T2 (no clip), else T3's residual
    warm: bool  # t < W: the T4c direction, the warm-up schedule of E
    early: bool  # t < W/2: OrthoGrad
    edge: bool  # T20 U3
    frequency: bool  # T21a (frequency_penalty > 0)
    polarity: bool  # upstream, warm: the stack held last_polarity before this step, so κ applies
    spatial: bool  # T23b: spatial awareness on, the state held, tensors of more than one element
    lora: bool  # T9d: LoRA matrices of at least two columns
    decay: bool  # T10: early and weight_decay > 0


class Consts(NamedTuple):
    """The group's hyperparameters: constants of the graph, but for β1, which a scheduler moves (OneCycleLR and
    CyclicLR write group["betas"] = (β1, *rest) at every step by default): a compiled step takes `beta1` and
    `one_minus_beta1` (computed on the host, as the reference computes 1 − β1) as views of its `scalars`
    tensor, so a new β1 compiles no new graph (it compiled two per step)."""

    eps1: float
    eps2: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    beta3: float
    edge_threshold: float
    edge_penalty: float
    frequency_penalty: float
    rank_strength: float
    adaptation_rate: float
    weight_decay: float


# entries of stack_step's `scalars`: the warm-up base η·t/W, the random walk's bounds 0.1·η and 10·η, and
# β1, 1 − β1 (Consts' scheduled fields, read through `c`)
BASE, WALK_LOW, WALK_HIGH, BETA1, ONE_MINUS_BETA1 = range(5)


def penalised_gradient(grad, rank_term, f: Flags, c: Consts):
    """Step 2: g' = g̃ + (edge_penalty·E_τ(g̃) + frequency_penalty·P(g̃) + k·L), the reference's sum with its
    zero terms left out (which changes no value or dtype)."""
    terms = []
    if f.edge:
        terms.append(c.edge_penalty * edge_penalty(grad, f.ndim, c.edge_threshold, full=True))
    if f.frequency:
        terms.append(c.frequency_penalty * fft_penalty(grad, f.ndim))
    if rank_term is not None:
        terms.append(c.rank_strength * rank_term)
    if not terms:
        return grad
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return grad + total


def tam_direction(st: dict, m, u, blocks, f: Flags, c: Consts):
    """T4c per tensor (tam.tam_as_update, or tam_as_update_fixed's scalar cosine). Returns U."""
    a = c.adaptation_rate
    if f.fixed:
        # s ← a·s + (1−a)·cos(m, u);  U = ((1 + s)/2)·m
        s = st["s"] * a + F.cosine_similarity(rows(m), rows(u), dim=1) * (1.0 - a)
        st["s"].copy_(s)
        return per((1.0 + s) / 2.0, m) * m
    # s ← a·s + (1−a)·N₀(m) ⊙ N₀(u)  (corr in m's dtype, as upstream's in-place product)
    corr = (normalize_dim0(m, f.ndim) * normalize_dim0(u, f.ndim)).to(m.dtype)
    s = load(st, "s", codec, blocks).mul(a).add(corr, alpha=1.0 - a)
    polarity = torch.sign(s)
    if f.polarity:  # s ← s·clamp(κ, 0.1, 1), κ = mean(π ⊙ last polarity)
        kappa = rows(polarity * st["last_polarity"].float()).mean(1)
        s = (s * per(kappa.clamp(0.1, 1.0), s)).to(s.dtype)
    st["last_polarity"].copy_(polarity.bool().to(st["last_polarity"].dtype))  # uint8 (shape_stack.step_states)
    return s


def schedule(st: dict, grad, noise, scalars, f: Flags):
    """T8e per tensor: while warm E = η·t/W · clamp(1/(r + 1e-8), 0.1, 10), r = n/(mean n + 1e-8), n the norm
    of g' along the last dim (|g'| below 2-D); after W a clamped random walk of E. E is stored (the caller
    has shaped the mask's buffer; an upstream bf16 E of another dtype rebinds it). Returns E."""
    mask = st["lr_mask"]
    if f.warm:
        norm = torch.norm(grad, dim=-1, keepdim=True) if f.ndim > 1 else grad.abs()
        relative = norm / (per(rows(norm).mean(1), norm) + 1e-8)
        new = scalars[BASE] * torch.clamp(1.0 / (relative + 1e-8), *ROW_FACTOR_RANGE)
    else:
        step = torch.clamp(noise * RANDOM_WALK_STD, -RANDOM_WALK_MAX_STEP, RANDOM_WALK_MAX_STEP)
        new = torch.clamp(mask * (1 + step), scalars[WALK_LOW], scalars[WALK_HIGH])
    if new.dtype == mask.dtype:
        mask.copy_(new)
    else:
        st["lr_mask"] = new
    return new


def spatial_factor(st: dict, update, f: Flags):
    """T23b per tensor: Vs ← 0.99·Vs + 0.01·var(U); returns clamp(Vs/(var(U) + 1e-8), 0.5, 2)."""
    variance = rows(update).var(1)
    vs = st["spatial_variance"]
    if f.fixed:  # Vs: one fp32 value per tensor
        new = vs.mul(0.99).add(variance, alpha=0.01)
        st["spatial_variance"].copy_(new)
        return per((new / (variance + 1e-8)).clamp(0.5, 2.0), update)
    variance = per(variance, update)
    new = vs.mul(0.99).add(variance, alpha=0.01).to(vs.dtype)
    st["spatial_variance"].copy_(new)
    return (new / (variance + 1e-8)).to(vs.dtype).clamp(0.5, 2.0)


def row_variance_scaling(update):
    """T9d per matrix: ρ = clamp(rv/(mean rv + 1e-8), 0.1, 10), rv the unbiased variance of each row."""
    row_variance = update.var(dim=2, keepdim=True)
    return torch.clamp(row_variance / (per(rows(row_variance).mean(1), row_variance) + 1e-8), 0.1, 10.0)


def stack_step(theta_store, raw_grad, group_sum, floor, st: dict, scalars, stats, rank_term, noise, blocks,
               f: Flags, c: Consts):  # fmt: skip
    """One step of a stack: θ (`theta_store`, the parameters' dtype) and the states `st` are written in place.
    `scalars`: [η·t/W, 0.1·η, 10·η, β1, 1 − β1] (a tensor, or floats uncompiled); `stats`: [μ, σ] of |g| over the group
    (T10; None unless `f.decay`); `rank_term`: T24's L(θ) (upstream U·diag(k·S)·Vh, fixed the tail gradient
    at k = 1; None when off); `noise` [c, *mask]: the random walk's z (after W); `blocks`: stack_codec.Blocks
    (None when no state is quantised); `floor`: the round-off floor (None: upstream)."""
    raw = floored(raw_grad.to(f.dtype), floor)
    theta = theta_store.to(f.dtype)

    # step 1, T1a: g̃ = g ⊙ (1 − |g|/(S + 1e-8));  step 2
    grad = raw * (1 - raw.abs() / (group_sum + AGR_EPS))
    grad = penalised_gradient(grad, rank_term, f, c)

    # step 3: m ← β1·m + (1−β1)·g'   (in the state's dtype, as upstream's in-place update)
    m = load(st, "exp_avg", codec, blocks)
    m = m.mul(c.beta1).add(grad, alpha=c.one_minus_beta1).to(m.dtype)
    # step 4: came: v ← β2·v + (1−β2)·(g'² + ε1), u = g' ⊙ rsqrt(v); else r likewise on (g' − m)², u = m/(√r + ε2)
    v = load(st, "exp_avg_sq", codec, blocks)
    if f.came:
        v = v.mul(c.beta2).add(grad.pow(2) + c.eps1, alpha=1 - c.beta2).to(v.dtype)
        u = grad * v.rsqrt()
    else:
        r = load(st, "exp_avg_res", codec, blocks)
        r = r.mul(c.beta3).add((grad - m).pow(2) + c.eps1, alpha=1 - c.beta3).to(r.dtype)
        v = v.mul(c.beta2).add(grad.pow(2) + c.eps1, alpha=1 - c.beta2).to(v.dtype)
        u = m / (r.sqrt() + c.eps2)
        store(st, "exp_avg_res", r, codec, blocks)
    store(st, "exp_avg_sq", v, codec, blocks)

    # step 5: T4c while warm, else U = m ⊙ (1 + 0.1·tanh(m ⊙ u))
    if f.warm:
        update = tam_direction(st, m, u, blocks, f, c)
    else:
        update = m * (1.0 + CONSISTENCY_GAIN * torch.tanh(m * u))
    store(st, "exp_avg", m, codec, blocks)

    # step 6, T7a while early; upstream's U is s, stored orthogonalised [I-06]
    if f.early:
        update = stack_orthograd(theta, update, f.fixed)
    if f.warm and not f.fixed:
        store(st, "s", update, codec, blocks)

    lr_eff = schedule(st, grad, noise, scalars, f)  # step 7
    if f.spatial:  # step 8
        lr_eff = lr_eff * spatial_factor(st, update, f)
    if f.lora:  # step 9
        lr_eff = lr_eff * row_variance_scaling(update)

    # step 10, T10: θ ← θ ⊙ (1 − E·wd·ϑ), ϑ = 2/(1 + exp(−4z)), z = (mean|g| − μ)/(σ + 1e-8)
    new_theta = theta_store
    if f.decay:
        z = (rows(raw.abs()).mean(1) - stats[0]) / (stats[1] + ADAPTIVE_WD_EPS)
        vartheta = per(2 / (1 + torch.exp(-ADA_ALPHA * z)), lr_eff)
        new_theta = (new_theta * (1 - (lr_eff * c.weight_decay * vartheta).to(lr_eff.dtype))).to(theta_store.dtype)
    # step 11: θ ← θ − U ⊙ E
    theta_store.copy_(new_theta - update * lr_eff)


_compiled_stack_step = compiled(stack_step, exact_casts=True, outer_loop_fusion=False, dynamic=True)


def fused_stack_step(*args):
    """`stack_step` compiled, with `Consts` taken as constants (see improved_step.fused_stack_step)."""
    with torch._dynamo.config.patch(specialize_float=True):
        return _compiled_stack_step(*args)
