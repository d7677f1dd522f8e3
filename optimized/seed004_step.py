"""Seed 004's Automagic_CameAMP_8Bit step (the S2o Improved pipeline) on a stack of same-shape tensors,
with its states read and written through the block min/max codec (optimized.minmax_codec).

As in improved_step, `x[i]` is tensor i of the stack, a per-tensor reduction is a reduction over every dim
but the first, and the reference's per-tensor branches (the SPD condition, the background test) are
`torch.where` selects. `stack_step` is compiled as one graph per `Flags` and shape class and writes θ and
every state in place; a quantised state is de-quantised, updated and re-quantised inside the graph. The
FFT frequency penalty is an opaque op (`cameamp::stack_fft_penalty`): inductor does not lower complex FFTs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from reference import frequency_penalty, spatial_awareness
from reference.tam import TAM_BETA, TAM_DECAY

from . import minmax_codec as codec
from .compile import compiled
from .improved_step import (
    AGR_EPS,
    cautious,
    edge_penalty,
    floored,
    minus_update,
    per,
    scale_v3,
    spd_step,
    suppress_update,
    tam,
    tensor_sum,
)
from .stack_state import is_quantized, load, store


def _high_pass(h: int, w: int, columns: int, device) -> torch.Tensor:
    """frequency_penalty's mask 1[D > 0.3·min(h, w)] over the first `columns` frequency columns of an h×w tensor."""
    y, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(columns, device=device), indexing="ij")
    distance = torch.sqrt((y - h // 2) ** 2 + (xs - w // 2) ** 2)
    return (distance > min(h, w) * frequency_penalty.HIGH_FREQUENCY_RADIUS).float()


@torch.library.custom_op("cameamp::stack_fft_penalty", mutates_args=())
def stack_fft_penalty(x: torch.Tensor) -> torch.Tensor:
    """frequency_penalty.fft_penalty of each matrix of a [c, h, w] stack (fft2 over the last two dims)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        # P = Re(ifft2(|fft2(x)| ⊙ mask)) from the half spectrum: for even h and w the mask is symmetric under
        # k → −k, so |fft2(x)| ⊙ mask keeps the spectrum's Hermitian symmetry and its inverse is real (the same P
        # to rounding; a stack of 21 16×768 matrices: 1.1 against 4.2 ms)
        magnitude = torch.fft.rfft2(x).abs()
        return torch.fft.irfft2(magnitude * _high_pass(h, w, w // 2 + 1, x.device), s=(h, w)).contiguous()
    magnitude = torch.fft.fft2(x).abs()
    return torch.real(torch.fft.ifft2(magnitude * _high_pass(h, w, w, x.device))).contiguous()


@stack_fft_penalty.register_fake
def _(x):
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return x.new_empty(x.shape, dtype=dtype)


def fft_penalty(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """frequency_penalty.fft_penalty per tensor: zeros of x's dtype unless the tensors are matrices."""
    return stack_fft_penalty(x.contiguous()) if ndim == 2 else torch.zeros_like(x)


def normalize_dim0(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """tam.normalize_dim0 per tensor: F.normalize over each tensor's dim 0 (a 0-d tensor as shape [1])."""
    if ndim == 0:
        return F.normalize(x[:, None], p=2.0, dim=1)[:, 0]
    return F.normalize(x, p=2.0, dim=1)


def tam_s2o(m, s, x, eps1: float, emphasis: float, ndim: int):
    """tam.tam_s2o per tensor: s ← γs + (1−γ)·N₀(m)⊙N₀(x); m ← βm + ((1 + e·s)/2 + ε1)·x. Returns (m, s)."""
    corr = normalize_dim0(m, ndim) * normalize_dim0(x, ndim)
    s = s.mul(TAM_DECAY).add(corr, alpha=1.0 - TAM_DECAY)
    s_used = s * emphasis if emphasis != 1.0 else s
    d = ((1.0 + s_used) / 2.0).add(eps1).mul(x)
    return m.mul(TAM_BETA).add(d), s


class Flags(NamedTuple):
    """Static switches of `stack_step`: one graph per combination."""

    ndim: int  # the parameters' ndim (the stack has one more)
    dtype: torch.dtype  # the state dtype: g and θ are taken in it
    fixed: bool
    came: bool  # T2 V3
    early: bool  # t < W/2: TAM, Grams, edge suppression of U
    warm: bool  # t < W: the mask warm-up, SPD
    edge: bool  # T20
    spatial: bool  # T21a, T23a
    spatial_variance: bool  # the stack holds the spatial_variance state
    background: bool  # T22


class Consts(NamedTuple):
    """The group's hyperparameters and the block size: constants of the graph."""

    eps1: float
    eps2: float
    clip: float
    edge_threshold: float
    edge_penalty: float
    frequency_penalty: float
    emphasis: float
    beta3: float
    lr_bump: float
    detail_preservation: float
    min_lr: float
    max_lr: float


# entries of stack_step's `scalars`
BETA1_T, ONE_MINUS_BETA1_T, DECAY = range(3)


def lr_mask_step(st: dict, grad, mask_scale, jumps, ix, f: Flags, c: Consts):
    """_lr_mask per tensor (T8c, S2o). While t < W: the polarity of g̃, the spatial bump, the lr jumps,
    clamp, stored. After W: the scale (no floor upstream, O1's 0.1 floor when fixed), not stored.
    Returns E."""
    mask = load(st, "lr_mask", codec, ix)
    if not f.warm:
        return mask * per(mask_scale, mask)
    # σ = ±1 where the polarity of g̃ agrees with the stored one
    polarity = (grad > 0).to(st["last_polarity"].dtype)  # uint8 (shape_stack.step_states)
    agree = torch.where(st["last_polarity"] == polarity, 1.0, -1.0)
    st["last_polarity"].copy_(polarity)
    bump = c.lr_bump
    if f.spatial:
        vs = load(st, "spatial_variance", codec, ix) if f.spatial_variance else torch.ones_like(mask)
        bump = spatial_awareness.spatial_bump(bump, vs, c.detail_preservation)
    # M ± b, + (η − lr_max) where the lr rose, clamped
    new = torch.where(agree > 0, mask + bump, mask - bump) + per(jumps, mask)
    new = new.clamp(min=c.min_lr, max=c.max_lr)
    store(st, "lr_mask", new, codec, ix)
    return new


def stack_step(theta_store, raw_grad, group_sum, floor, st: dict, scalars, rank_term, res_weight, mask_scale, jumps,
               ix, f: Flags, c: Consts):  # fmt: skip
    """One step of a stack: θ (`theta_store`) and the states `st` are written in place. `scalars`:
    [β1_t, 1 − β1_t, λ] (consistency momentum, SPD's decay), `rank_term`: T24's term added to g̃ (or None),
    `res_weight` [c]: the fixed residual's bias correction, `mask_scale` [c]: the post-warm-up scale, `jumps`
    [c]: the warm-up mask's lr jumps, `ix`: the blocks (stack_blocks.BlockIndex; None when no state is
    quantised), `floor`: the round-off floor (None: upstream). Returns the new LR mask while warm if it is
    stored quantised (for avg_lr), else None."""
    raw_grad = floored(raw_grad.to(f.dtype), floor)
    theta = theta_store.to(f.dtype)

    # T1a + T20 U1 (full Laplacian): α = |g|/(S + 1e-10) ⊙ (1 + edge_penalty·E_τ(g));  g̃ = g ⊙ (1 − α)
    alpha = raw_grad.abs() / (group_sum + AGR_EPS)
    if f.edge:
        alpha = alpha * (1.0 + c.edge_penalty * edge_penalty(raw_grad, f.ndim, c.edge_threshold, full=True))
    grad = raw_grad * (1 - alpha)
    # T21a: g̃ ← g̃ − frequency_penalty·P(g̃);  T24
    if f.spatial and f.ndim >= 2:
        grad = grad - c.frequency_penalty * fft_penalty(grad, f.ndim)
    if rank_term is not None:
        grad = grad + rank_term

    # T2 V3 (clip u/max(RMS/c, 1))
    if f.came:
        u, v = scale_v3(grad, load(st, "exp_avg_sq", codec, ix), c.eps1, c.clip, improved_clip=False)
        store(st, "exp_avg_sq", v, codec, ix)
    else:
        u = grad

    # T4b (S2o) TAM while early, else T5 consistency momentum
    m = load(st, "exp_avg", codec, ix)
    if f.early:
        s = load(st, "s", codec, ix)
        if f.fixed:
            m, s = tam(m, s, u, TAM_DECAY, c.eps1, c.emphasis, f.ndim, fixed=True)
        else:
            m, s = tam_s2o(m, s, u, c.eps1, c.emphasis, f.ndim)
        store(st, "s", s, codec, ix)
    else:
        m = m.mul(scalars[BETA1_T]).add(u * scalars[ONE_MINUS_BETA1_T])
    store(st, "exp_avg", m, codec, ix)

    # T3: r ← β3 r + (1−β3)((u − m)² + ε2);  U = m ⊙ rsqrt(r)
    r = load(st, "exp_avg_res", codec, ix).mul(c.beta3).add((u - m).pow(2) + c.eps2, alpha=1.0 - c.beta3)
    store(st, "exp_avg_res", r, codec, ix)
    if f.fixed:
        r = r / per(res_weight, r)
    update = m * r.rsqrt()

    lr_eff = lr_mask_step(st, grad, mask_scale, jumps, ix, f, c)  # T8c (S2o)

    if f.early:
        update = update.abs() * grad.sign()  # T6
        if f.edge:  # T20 U2
            history = load(st, "edge_history", codec, ix)
            update, history = suppress_update(update, history, c.edge_penalty, f.ndim, full=True)
            store(st, "edge_history", history, codec, ix)
    else:  # T12 + T22 on g̃
        update = cautious(update, grad, f.background)
    update = update * lr_eff

    # T11b SPD while t < W, per tensor where c = −⟨g, θ − θ0⟩ < 0 (upstream: g̃ and θ0 = the last iterate,
    # 0 at t = 1; fixed: the raw g and θ0 = the first-step weights), else θ ← θ − U
    new_theta = minus_update(theta_store, theta, update)
    if f.warm:
        condition = -tensor_sum((raw_grad if f.fixed else grad) * (theta - st["pre"]))
        new_theta = torch.where(condition < 0.0, spd_step(theta, update, st["pre"], scalars[DECAY]), new_theta)
        if not f.fixed:  # re-anchored: θ_{t+1} where SPD fired, else θ_t
            st["pre"].copy_(torch.where(condition < 0.0, new_theta.to(theta_store.dtype), theta_store))
    theta_store.copy_(new_theta)

    # T23a on g̃
    if f.spatial and f.spatial_variance and f.ndim >= 2:
        vs = spatial_awareness.update_spatial_variance(load(st, "spatial_variance", codec, ix), grad)
        store(st, "spatial_variance", vs, codec, ix)
    return lr_eff if f.warm and is_quantized(st, "lr_mask") else None


_compiled_stack_step = compiled(stack_step, exact_casts=True, outer_loop_fusion=False, dynamic=True)


def fused_stack_step(*args):
    """`stack_step` compiled, with `Consts` taken as constants (see improved_step.fused_stack_step)."""
    with torch._dynamo.config.patch(specialize_float=True):
        return _compiled_stack_step(*args)
