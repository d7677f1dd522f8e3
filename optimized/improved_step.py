"""Automagic_CameAMP_Improved's step on a stack of same-shape tensors: `x[i]` is tensor i, so an
element-wise line of the reference is the same line here, a per-tensor reduction is a reduction over
every dim but the first, and the 2-D stencils (Laplacian, finite differences, row variance) and the
rank penalty's eigh/SVD are batched over the stack. Per-tensor branches of the reference (the d_coef and
SPD conditions, the background test, the global-cosine guard, OrthoGrad's guards) are `torch.where`
selects, so nothing is read back to the host.

`stack_step` is the whole step of one stack after the rank penalty, compiled as one graph per `Flags`
(a run sees about three: early, late warm-up, post-warm-up) and shape class, or for one tensor too large
to stack as passes split at its reductions (`Passes`); it writes θ and every state in place. Two parts
stay outside the fused loops: the rank penalty (batched eigh/SVD on small matrices, computed before) and
OrthoGrad, an opaque op (`cameamp::stack_orthograd`) run eagerly inside the graph,
because upstream's OrthoGrad of an update nearly parallel to θ returns rounding noise rescaled to ‖x‖,
which only the reference's own summation order (torch.dot per tensor) and FMA reproduce.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from reference import edge_suppression, low_rank_penalty, spatial_awareness
from reference.came_style import V3_BETA2
from reference.dual_momentum import dual_momentum
from reference.orthograd import PARALLEL_TOL
from reference.roundoff_floor import floor_roundoff
from reference.tam import CORRELATION_SWITCH, IMPROVED_TAM_BETA

from .compile import compiled

AGR_EPS = 1e-10
CAUTIOUS_MIN_MEAN = 1e-3


class Passes:
    """A stack step's code run as passes split at its per-tensor reductions, for tensors too large to stack
    (`in_passes`). Compiled as one graph, a step keeps every value that crosses a reduction as a fresh
    full-size fp32 buffer (5 in the t ≥ W graph: 20 bytes/param of step peak; above glibc's 32 MB mmap
    threshold each is mapped and zeroed anew at every step: 178 ms of a 16M tensor's step, 70 with freed
    memory kept). Run in passes, pass k computes the reductions of level k from what the passes before
    returned, reading the states again; the last takes every reduction as given and writes θ and the
    states. Inductor drops what a pass does not return, so no pass holds a full-size temporary (the 16M
    step: 51 ms in 3 passes).

    `given`: the reductions of the passes run so far, one tuple per pass; None runs the step in one pass, as
    the eager code and small stacks do. A level ends at `barrier()`; a reduction that depends on another of
    its own level is still exact (the pass computes both), it only makes that pass hold the values between.
    Writes wait for the end of the pass in every mode, so the step never reads a state it has written."""

    def __init__(self, given: tuple | None):
        self.given = given
        self.level = 0
        self.at_level = 0  # reductions met at the current level
        self.computed: list = []  # the reductions this pass returns
        self.writes: list = []

    def reduced(self, value: torch.Tensor) -> torch.Tensor:
        if self.given is None:
            return value
        if self.level < len(self.given):
            value = self.given[self.level][self.at_level]
        elif self.level == len(self.given):
            self.computed.append(value)
        self.at_level += 1
        return value

    def barrier(self) -> None:
        """What follows may depend on the reductions before."""
        if self.at_level:
            self.level, self.at_level = self.level + 1, 0

    def write(self, target: torch.Tensor, value: torch.Tensor) -> None:
        self.writes.append((target, value))

    def finish(self) -> tuple | None:
        """The reductions this pass computed, or (the last pass) None once θ and the states are written."""
        if self.computed:
            return tuple(self.computed)
        for target, value in self.writes:
            target.copy_(value)
        return None


ONE_PASS = Passes(None)  # holds nothing: with `given` None, `reduced` and `barrier` change no attribute


def in_passes(step, *args) -> None:
    """Runs `step(*args, given)` (a `stack_step`) pass after pass until it writes (see `Passes`)."""
    given: tuple = ()
    while (computed := step(*args, given)) is not None:
        given += (computed,)


def rows(x: torch.Tensor) -> torch.Tensor:
    """[c, ...] → [c, n]: one row per tensor."""
    return x.reshape(x.shape[0], -1)


def per(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-tensor value [c] broadcast against a stack [c, ...]."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def tensor_sum(x):
    return per(rows(x).sum(1), x)


def tensor_norm(x):
    return per(torch.linalg.vector_norm(rows(x), dim=1), x)


def tensor_rms(x):
    """RMS(x) = ‖x‖₂ / (√n + 1e-10) per tensor."""
    return tensor_norm(x) / (rows(x).shape[1] ** 0.5 + 1e-10)


@torch.library.custom_op("cameamp::tensor_dots", mutates_args=())
def tensor_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[c]: ⟨a_i, b_i⟩ per tensor with torch.dot, one call per tensor, run eagerly even inside a compiled
    graph. The reference's OrthoGrad and global cosine use torch.dot: upstream's OrthoGrad of an update
    nearly parallel to θ (the rank penalty makes g̃ ≈ 20·θ) amplifies any other summation order to ~1e-6
    of the parameter, and the cosine of two near-orthogonal tensors of 10,000+ elements (TAM) is a sum
    that cancels to ~1/√n of its terms, so its relative round-off grows to ~1e-5."""
    return torch.stack([torch.dot(x, y) for x, y in zip(rows(a), rows(b), strict=True)])


@tensor_dots.register_fake
def _(a, b):
    return a.new_empty(a.shape[:1])


@torch.library.custom_op("cameamp::tensor_norms", mutates_args=())
def tensor_norms(a: torch.Tensor) -> torch.Tensor:
    """[c]: ‖a_i‖₂ per tensor by ATen, as the reference's TAM cosine takes them: ATen's fp32 norm sums
    serially (5e-6 off the exact value on 12,000 elements, 3e-3 on 4M equal ones), inductor's differently."""
    return torch.stack([x.norm() for x in rows(a)])


@tensor_norms.register_fake
def _(a):
    return a.new_empty(a.shape[:1])


def tensor_dot(a, b):
    """⟨a_i, b_i⟩ per tensor, broadcast against the stack (see `tensor_dots`)."""
    return per(tensor_dots(a.contiguous(), b.contiguous()), a)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """edge_suppression.laplacian(x, "full"), over the last two dims, as one expression of zero-padded stencils:
    each element sums the same terms in the same order (bit-identical), where in-place adds into slices made
    inductor keep the Laplacian and each stencil as buffers."""
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return torch.zeros_like(x)
    # L[i, :] = x[i+1, :] − 2x[i, :] + x[i−1, :] (interior rows), + the same over the interior columns
    down = F.pad(x[..., 2:, :] - 2 * x[..., 1:-1, :] + x[..., :-2, :], (0, 0, 1, 1))
    across = F.pad(x[..., :, 2:] - 2 * x[..., :, 1:-1] + x[..., :, :-2], (1, 1))
    return down + across


def edge_penalty(x: torch.Tensor, ndim: int, threshold: float, full: bool = False) -> torch.Tensor:
    """edge_suppression.edge_penalty(x[i], threshold, variant) for each i. `full` (seed 004's and Improved_8Bit's
    variant): the Laplacian over the last two dims of every ≥ 2-D tensor; else ("optimized", Improved's) of
    matrices only, and fp32 zeros for other ≥ 2-D shapes. Below 2-D: zeros of x's dtype."""
    if ndim < 2:
        return torch.zeros_like(x)
    strength = laplacian(x).abs() if full or ndim == 2 else torch.zeros_like(x)
    return (strength > threshold).float() * strength


def finite_difference_penalty(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """frequency_penalty.finite_difference_penalty per tensor (2-D tensors with both dims ≥ 2), zero-padded as
    `laplacian`: R[:, 1:] = |x[:, 1:] − x[:, :−1]|, then R[1:, :] += |x[1:, :] − x[:−1, :]|."""
    if ndim != 2 or x.shape[1] < 2 or x.shape[2] < 2:
        return torch.zeros_like(x)
    across = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (1, 0))
    return across + F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 1, 0))


def rank_penalty(theta: torch.Tensor, strength: float, form: str) -> torch.Tensor:
    """low_rank_penalty's three forms for a stack of matrices; eigh and SVD are batched, in fp32."""
    x = theta if theta.dtype in (torch.float32, torch.float64) else theta.float()
    k = low_rank_penalty.KEPT_RANK
    if form == "approximate":
        gram = x @ x.mT if x.shape[1] <= x.shape[2] else x.mT @ x
        eigenvalues = torch.linalg.eigh(gram)[0].flip(-1)  # descending
        tail = per(eigenvalues[:, k:].sum(-1), theta) * strength
        return theta * (tail if theta.dtype == x.dtype else tail.to(theta.dtype))
    if form == "exact":
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return (u @ torch.diag_embed(s * strength) @ vh).to(theta.dtype)
    # the corrected tail nuclear-norm gradient: zero when rank ≤ k or θ is not finite
    if min(theta.shape[1:]) <= k:
        return torch.zeros_like(theta)
    wide = theta.shape[1] < theta.shape[2]
    if wide:  # of θᵀ, transposed back, as low_rank_penalty.tail_nuclear_gradient takes it
        x = x.mT
    # finite: max |x| is (NaN propagates); a tensor that is not is decomposed as zeros and weighted 0, so its
    # arbitrary singular vectors give 0 (the same values as a select after the product, one pass fewer)
    finite = torch.isfinite(x.abs().amax(dim=(1, 2)))[:, None, None]
    u, _, vh = torch.linalg.svd(torch.where(finite, x, 0.0), full_matrices=False)
    tail = ((u[..., :, k:] * (finite.to(x.dtype) * strength)) @ vh[..., k:, :]).to(theta.dtype)
    return tail.mT.contiguous() if wide else tail


def scale_v3(grad, v, eps1: float, clip_threshold: float, improved_clip: bool, passes: Passes = ONE_PASS):
    """came_style.scale_v3 per tensor. Returns (u, the new v)."""
    v = v.mul(V3_BETA2).add(grad.pow(2).add(eps1), alpha=1 - V3_BETA2)
    u = grad * v.rsqrt()
    rms = passes.reduced(tensor_rms(u))
    passes.barrier()
    if improved_clip:  # u·c / max(RMS(u), 1)
        return u.mul(clip_threshold / rms.clamp(min=1.0)), v
    return u / (rms / clip_threshold).clamp(min=1.0), v


def correlation(m: torch.Tensor, x: torch.Tensor, ndim: int, passes: Passes = ONE_PASS) -> torch.Tensor:
    """tam.fast_correlation per tensor: the column cosine over the tensor's dim 0 below 10,000 elements (or
    1-D), else the global cosine (0 when ‖m‖‖x‖ < 1e-12), as a full tensor."""
    if ndim == 0:
        m, x = m.unsqueeze(1), x.unsqueeze(1)
    if rows(m).shape[1] < CORRELATION_SWITCH or ndim <= 1:
        dot = torch.sum(m * x, dim=1, keepdim=True)
        denominator = torch.clamp(m.norm(p=2, dim=1, keepdim=True) * x.norm(p=2, dim=1, keepdim=True), min=1e-12)
        cos = torch.ones_like(m).mul(passes.reduced(dot / denominator))
    else:
        denominator = per(tensor_norms(m.contiguous()) * tensor_norms(x.contiguous()), m)
        cos = passes.reduced(torch.where(denominator < 1e-12, 0.0, tensor_dot(m, x) / denominator))
        cos = cos.expand_as(m).to(m.dtype)
    passes.barrier()
    return cos.squeeze(1) if ndim == 0 else cos


def tam(m, s, x, gamma: float, eps1: float, emphasis: float, ndim: int, fixed: bool, passes: Passes = ONE_PASS):
    """tam.tam_improved (upstream: element-wise s, stored emphasis) or tam_improved_fixed (scalar cosine s)."""
    if fixed:
        cos = passes.reduced(F.cosine_similarity(rows(m), rows(x), dim=1))
        passes.barrier()
        s = s * gamma + cos * (1.0 - gamma)
        s_used = per((s * emphasis).clamp(-1.0, 1.0), m)
        d = ((1.0 + s_used) / 2.0 + eps1) * x
        return m * IMPROVED_TAM_BETA + d * (1.0 - IMPROVED_TAM_BETA), s
    s = s.mul(gamma).add(correlation(m, x, ndim, passes), alpha=1.0 - gamma)
    if emphasis != 1.0:
        s = s.mul(emphasis)
    d = s.add(1.0).div(2.0).add(eps1).mul(x)
    return m.mul(IMPROVED_TAM_BETA).add(d), s


@torch.library.custom_op("cameamp::stack_orthograd", mutates_args=())
def stack_orthograd(theta: torch.Tensor, x: torch.Tensor, fixed: bool) -> torch.Tensor:
    """`orthograd`, run eagerly even inside a compiled graph (see the module doc)."""
    return orthograd(theta, x, fixed)


@stack_orthograd.register_fake
def _(theta, x, fixed):
    return torch.empty_like(x)


def orthograd(theta, x, fixed: bool):
    """orthograd.orthograd per tensor (x unchanged where ‖θ‖ ≤ 1e-30; zeros where the corrected mode finds
    x parallel to θ)."""
    w = theta.to(x.dtype)
    nu = tensor_norm(x)
    proj = tensor_dot(w, x) / tensor_dot(w, w).add(1e-30)
    # rounded as the reference's x.sub(w, alpha=π) rounds on CPU (a fused multiply-add in fp32, π·w rounded
    # first in bf16): a one-element x is parallel to θ, and its v⊥ is nothing but that rounding
    full = x.dtype in (torch.float32, torch.float64)
    out = torch.addcmul(x, w, -proj) if full else x - proj * w  # v⊥, then rescaled and selected in place: eager,
    perp_norm = tensor_norm(out)  # each fresh 16M buffer is mapped and zeroed (104 against 48 ms per call)
    out.mul_(nu / perp_norm.add(1e-30))
    if fixed:
        out.masked_fill_(perp_norm <= PARALLEL_TOL * nu, 0.0)
    return torch.where(tensor_norm(theta) <= 1e-30, x, out, out=out)


def cautious(update, x, background: bool, passes: Passes = ONE_PASS):
    """T12 with T22: φ = 1[U ⊙ u' > 0] / max(mean φ, 1e-3), halved where var(u') < 1e-6."""
    mask = (update * x > 0).to(x.dtype)
    mean = passes.reduced(per(rows(mask).mean(1), mask))
    if background:
        n = rows(x).shape[1]
        variance = rows(x).var(1) if n > 1 else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        variance = passes.reduced(variance)
    passes.barrier()
    mask = mask / mean.clamp(min=CAUTIOUS_MIN_MEAN)
    if background:
        low = spatial_awareness.BACKGROUND_VARIANCE
        factor = torch.where(variance < low, spatial_awareness.BACKGROUND_FACTOR, 1.0).to(mask.dtype)
        mask = mask * per(factor, mask)
    return update * mask


def suppress_update(update, edge_history, penalty: float, ndim: int, full: bool = False):
    """edge_suppression.suppress_update per tensor (`full`: see `edge_penalty`). Returns (U, eh)."""
    edge = edge_penalty(update, ndim, edge_suppression.DEFAULT_THRESHOLD, full)
    edge_history = edge_history.mul(0.9).add(edge, alpha=0.1).to(edge_history.dtype)
    return update * (1.0 - penalty * edge_history).clamp(0.1, 1.0), edge_history


def minus_update(theta_store, theta, update):
    """θ − U, subtracted from the parameter itself where it is fp64 (as the reference subtracts U from p, so an
    fp64 θ keeps fp64 precision), else from θ in the state dtype."""
    return (theta_store if theta_store.dtype == torch.float64 else theta) - update


def spd_step(theta, update, anchor, decay, passes: Passes = ONE_PASS):
    """spd.spd_step per tensor: θ̃ = θ − U; θ̃ − λ·r·(θ̃ − θ0)."""
    new_theta = theta - update
    curr, prev = passes.reduced(tensor_norm(new_theta - anchor)), passes.reduced(tensor_norm(theta - anchor))
    passes.barrier()
    ratio = F.hardtanh((curr - prev) / (curr + 1e-8), 0.0, 1.0)
    return new_theta - (new_theta - anchor) * (ratio * decay)


# ---------------------------------------------------------------- the fused step of one stack
def floored(raw_grad: torch.Tensor, floor) -> torch.Tensor:
    """The gradient in the state dtype with its round-off elements as 0 (reference.roundoff_floor), inside the
    step's graph: eager, the three passes over a 16M gradient took 50 of a 185 ms step."""
    return raw_grad if floor is None else floor_roundoff(raw_grad, floor)


def abs_sum(grads: torch.Tensor, fixed: bool) -> torch.Tensor:
    """Σ|g| of a stack of gradients (a part of AGR's group sum S), in fp32 when fixed, else the grads' dtype."""
    return (grads.float() if fixed else grads).abs().sum()


fused_abs_sum = compiled(abs_sum, stores_states=False, dynamic=True)


def abs_deviation_sumsq(grads: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Σ(|g| − μ)² of a stack of gradients in fp32 (a part of T10's group variance)."""
    return (grads.float().abs() - mu).square().sum()


fused_abs_deviation_sumsq = compiled(abs_deviation_sumsq, stores_states=False, dynamic=True)


class Flags(NamedTuple):
    """Static switches of `stack_step`: one graph per combination."""

    ndim: int  # the parameters' ndim (the stack has one more)
    fixed: bool
    came: bool  # T2 V3
    dual: bool  # T15a dual momentum
    early: bool  # TAM, OrthoGrad, Grams, edge suppression
    warm: bool  # t < W: the mask warm-up, SPD
    d_coef_phase: bool  # t < W/2: the condition scales the mask bumps
    edge: bool  # T20
    spatial: bool  # T21b, T23a
    spatial_variance: bool  # the stack holds the spatial_variance state (every ndim; updated when ≥ 2-D)
    background: bool  # T22


class Consts(NamedTuple):
    """The group's hyperparameters: constants of the graph (a change recompiles; see `fused_stack_step`), but
    for the two a scheduler moves: OneCycleLR and CyclicLR write group["betas"] = (β1, *rest) at every step by
    default, and β1 sets `mix` when alpha_mix_ratio is None. A compiled step takes `beta1` and `mix` as views
    of its `scalars` tensor (BETA1, MIX), so a new β1 compiles no new graph (it compiled two per step); in
    fp32 a tensor input gives the same results bit for bit as the constant did."""

    eps1: float
    eps2: float
    clip: float
    edge_threshold: float
    edge_penalty: float
    frequency_penalty: float
    beta1: float
    beta2: float
    long_term_beta: float
    mix: float
    beta1_decay: float
    emphasis: float
    beta3: float
    lr_bump: float
    d_coef: float
    detail_preservation: float
    min_lr: float
    max_lr: float


def lr_mask_step(st: dict, x, condition, mask_scale, jumps, f: Flags, c: Consts, passes: Passes):
    """_lr_mask per tensor (T8c + T23a). Returns E."""
    mask = st["lr_mask"]
    if not f.warm:
        if mask_scale is None:
            return mask
        scaled = mask * per(mask_scale, mask)
        if not f.fixed:  # stored: compounding [I-10]
            passes.write(mask, scaled)
        return scaled
    # polarity agreement σ = ±1, π = (u' > 0), held as uint8 (shape_stack.step_states)
    polarity = (x > 0).to(st["last_polarity"].dtype)
    agree = torch.where(st["last_polarity"] == polarity, 1.0, -1.0)
    passes.write(st["last_polarity"], polarity)
    bump = c.lr_bump
    if f.spatial:
        vs = st["spatial_variance"] if f.spatial_variance else torch.ones_like(mask)
        bump = spatial_awareness.spatial_bump(bump, vs, c.detail_preservation)
    bump_up = bump_down = bump
    if f.d_coef_phase:
        scaled = bump * c.d_coef
        if not torch.is_tensor(bump):
            bump, scaled = (torch.full_like(condition, b, dtype=torch.float32) for b in (bump, scaled))
        bump_up = torch.where(condition > 0.0, scaled, bump)
        bump_down = torch.where(condition < 0.0, scaled, bump)
    # + (lr − lr_max) where the lr rose above lr_max
    mask = mask + torch.where(agree > 0, bump_up, -bump_down) + per(jumps, mask)
    mask = mask.clamp(min=c.min_lr, max=c.max_lr).to(st["lr_mask"].dtype)
    passes.write(st["lr_mask"], mask)
    return mask


# entries of stack_step's `scalars` (BETA1, MIX: the Consts fields a scheduler moves, read through `c`)
BETA1_T, ONE_MINUS_BETA1_T, DECAY, BETA1, MIX = range(5)


def stack_step(theta_store, raw_grad, group_sum, floor, st: dict, scalars, rank_term, res_weight, mask_scale,
               jumps, f: Flags, c: Consts, given: tuple | None = None):  # fmt: skip
    """One step of a stack: θ (`theta_store`, the parameters' dtype) and the states `st` (the state dtype)
    are written in place. `scalars`: [β1_t, 1 − β1_t, λ, β1, mix] (the consistency momentum's coefficients,
    unused while early, SPD's decay, rank-aware on matrices, and `c`'s scheduled fields), tensors so that a
    new value is no new graph;
    `rank_term`: the rank penalty added to g̃ (or None); `res_weight` [c]: the fixed residual's bias
    correction; `mask_scale` [c]: the post-warm-up mask scale (None: all 1); `jumps` [c]: the warm-up
    mask's lr jumps (zeros where the lr did not rise); `floor`: the round-off floor (None: upstream);
    `given`: see `Passes` (returns a pass's reductions, or None once it has written)."""
    passes = Passes(given)
    dtype = st["exp_avg"].dtype
    raw_grad = floored(raw_grad.to(dtype), floor)
    theta = theta_store.to(dtype)

    # T1a + T20 U1: α = |g|/(S + 1e-10) ⊙ (1 + edge_penalty·E_τ(g));  g̃ = g ⊙ (1 − α)
    alpha = raw_grad.abs() / (group_sum + AGR_EPS)
    if f.edge:
        alpha = (alpha * (1.0 + c.edge_penalty * edge_penalty(raw_grad, f.ndim, c.edge_threshold))).to(alpha.dtype)
    grad = raw_grad * (1 - alpha)
    # T21b, T24
    if f.spatial and f.ndim >= 2:
        grad = grad.sub(finite_difference_penalty(grad, f.ndim), alpha=c.frequency_penalty)
    if rank_term is not None:
        grad = grad + rank_term

    # the d_coef / SPD condition per tensor (depends on no reduction: it joins the first level)
    condition = None
    if f.warm:
        source, anchor = (raw_grad, theta - st["pre"]) if f.fixed else (grad, theta)
        condition = passes.reduced(-tensor_sum(source * anchor))

    # T2 V3
    u = grad
    if f.came:
        u, v = scale_v3(grad, st["exp_avg_sq"], c.eps1, c.clip, not f.fixed, passes)
        passes.write(st["exp_avg_sq"], v)

    # T15a dual momentum; m := M
    m = st["exp_avg"]
    if f.dual:
        x, m, long_term, mixed_sq = dual_momentum(
            u, st["long_term_momentum"], st["mixed_momentum_sq"], c.beta1, c.beta2, c.long_term_beta, c.mix, c.eps1
        )
        passes.write(st["long_term_momentum"], long_term)
        passes.write(st["mixed_momentum_sq"], mixed_sq)
    else:
        x = u

    # T4b TAM while early, else T5 consistency momentum
    if f.early:
        m, s = tam(m, st["s"], x, c.beta1_decay, c.eps1, c.emphasis, f.ndim, f.fixed, passes)
        passes.write(st["s"], s)
    else:
        m = m.mul(scalars[BETA1_T]).add(x * scalars[ONE_MINUS_BETA1_T])
    passes.write(st["exp_avg"], m)

    # T3 residual
    r = st["exp_avg_res"].mul(c.beta3).add(x.sub(m).pow(2).add(c.eps2), alpha=1.0 - c.beta3)
    passes.write(st["exp_avg_res"], r)
    if f.fixed:
        r = r / per(res_weight, r)
    update = m * r.rsqrt()

    lr_eff = lr_mask_step(st, x, condition, mask_scale, jumps, f, c, passes)

    if f.early:
        update = passes.reduced(stack_orthograd(theta, update, f.fixed))  # computed once, opaque
        passes.barrier()
        update = update.abs() * x.sign()
        if f.edge:
            update, edge_history = suppress_update(update, st["edge_history"], c.edge_penalty, f.ndim)
            passes.write(st["edge_history"], edge_history)
    else:
        update = cautious(update, x, f.background, passes)

    update = (update * lr_eff).to(update.dtype)

    # T11a SPD while warm (per tensor, where c < 0), else θ ← θ − U
    new_theta = minus_update(theta_store, theta, update)
    if f.warm:
        spd = spd_step(theta, update, st["pre"], scalars[DECAY], passes)
        new_theta = torch.where(condition < 0.0, spd, new_theta)
        if not f.fixed:  # upstream re-anchors before the plain update: θ_{t+1} where SPD fired, else θ_t [I-29]
            passes.write(st["pre"], torch.where(condition < 0.0, new_theta.to(theta_store.dtype), theta_store))
    passes.write(theta_store, new_theta)

    # T23a
    if f.spatial_variance and f.ndim >= 2:
        passes.write(st["spatial_variance"], spatial_awareness.update_spatial_variance(st["spatial_variance"], x))
    return passes.finish()


_compiled_stack_step = compiled(stack_step, exact_casts=True, outer_loop_fusion=False, dynamic=True)


def fused_stack_step(*args):
    """`stack_step` compiled, with `Consts` taken as constants: dynamo would turn a float that changed into
    a symbolic input, and torch 2.13's inductor then bakes `1 − x` of it into the kernel unguarded (found
    with `alpha=1 − β1_t`, which is why the per-step scalars are a tensor input)."""
    with torch._dynamo.config.patch(specialize_float=True):
        return _compiled_stack_step(*args)
