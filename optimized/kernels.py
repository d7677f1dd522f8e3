"""Technique kernels on the chunked layout (see layout.py), traced by torch.compile.

Every function takes `[nchunks, C]` element tensors (C: the layout's row width) and `[nchunks, 1]` per-row
values (a per-tensor scalar broadcast to its rows), computes element-wise in float32 (per-tensor sums in
float64), and has a readable twin in `reference/`; the equivalence tests compare each pair. Per-tensor
reductions go through `tensor_sum`, which is a row sum plus a segment sum over rows, so nothing here loops
over tensors. Row and dim-0 column quantities (ALLoRA, upstream TAM) are computed eagerly per run of
same-shape tensors (`column_normaliser`, `row_norms`, `expand_rows`): dense reductions and broadcast writes
instead of per-element gathers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .compile import compile_enabled, compiled
from .layout import Layout
from .segment_ops import segment_sum

FP32_MAX = torch.finfo(torch.float32).max


class Idx(NamedTuple):
    """The layout's index tensors, as graph inputs (sizes come from their shapes, not Python ints)."""

    chunk_tensor: torch.Tensor  # [N]
    chunk_valid: torch.Tensor  # [N, 1]
    lanes: torch.Tensor  # [1, C] int64: 0 … C − 1, the position of each element in its row
    numel_t: torch.Tensor  # [T] float64


def index_tensors(layout: Layout) -> Idx:
    lanes = torch.arange(layout.chunk, device=layout.chunk_valid.device).view(1, -1).clone()  # no _base to go symbolic
    return Idx(layout.chunk_tensor, layout.chunk_valid, lanes, layout.numel_t)


# ---------------------------------------------------------------- segment helpers
def valid_mask(idx: Idx) -> torch.Tensor:
    """True on real elements, False on padding."""
    return idx.lanes < idx.chunk_valid


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or in its own dtype where that is wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def tensor_sum(x: torch.Tensor, idx: Idx) -> torch.Tensor:
    """Per-tensor sum of a [N, C] tensor, float64, shape [T]; rows are summed in float32, or in float64 when x
    is float64 (squares of large values, e.g. SPD's ‖θ − θ0‖², overflow float32 before they are summed). A sum
    of float32 values beyond float32's range is ±inf, as the reference's float32 sum is, whatever the row width."""
    total = segment_sum(at_least_fp32(x).sum(dim=1), idx.chunk_tensor, idx.numel_t)
    return total if x.dtype == torch.float64 else in_fp32_range(total)


def in_fp32_range(total: torch.Tensor) -> torch.Tensor:
    """A float64 sum of float32 values as a float32 accumulator ends: ±inf where it passed float32's range."""
    return torch.where(total.abs() <= FP32_MAX, total, total.sign() * torch.inf)


def per_row(values: torch.Tensor, idx: Idx) -> torch.Tensor:
    """Broadcast a per-tensor [T] value to its rows: [N, 1] float32."""
    return values[idx.chunk_tensor].float().view(-1, 1)


def column_normaliser(m: torch.Tensor, u: torch.Tensor, inv_div: torch.Tensor, layout: Layout, out=None,
                      shards=None):  # fmt: skip
    """w = 1 / (max(‖m[:, j]‖, 1e-12) · max(‖u[:, j]‖, 1e-12)) for every element's dim-0 column j, [N, C].

    N₀(m) ⊙ N₀(u) = m·u·w. u is the unclipped scaled gradient, so its column norms are scaled by the
    per-tensor clip factor inv_div [T]. Runs eagerly: same-shape tensors are adjacent in a bucket, so
    each shape class is one dense [k, n0, rest] reduction and one broadcast write (no scatter, no
    per-element index arithmetic, and a cost independent of the number of tensors). `out` may be u
    itself (each class reads its block before writing it). `shards` (optimized.shard_sums, FSDP2): the
    columns' sums of squares over every rank's rows, all-reduced once for all classes.
    """
    if out is None:
        out = torch.zeros_like(m, dtype=torch.float32)
    blocks = []
    for first, count, shape in layout.shape_classes:
        n, start = layout.numels[first], layout.chunk_start[first]
        stop = start + count * (layout.row_slice(first).stop - start)
        n0 = shape[0] if len(shape) else 1
        blocks.append((first, count, n0, start, stop, n))
    if shards is None:
        norms = [[_column_norm(_class_block(x, start, stop, count, n, n0)) for x in (m, u)]
                 for _, count, n0, start, stop, n in blocks]  # fmt: skip
    else:
        norms = _sharded_column_norms(m, u, blocks, shards)
    for (first, count, n0, start, stop, n), (norm_m, norm_u) in zip(blocks, norms, strict=True):
        norm_u = norm_u * inv_div[first : first + count].float().view(-1, 1)
        w = 1.0 / (norm_m.clamp(min=1e-12) * norm_u.clamp(min=1e-12))
        _class_block(out, start, stop, count, n, n0).copy_(w.unsqueeze(1).expand(count, n0, w.shape[1]))
    return out


def _sharded_column_norms(m, u, blocks, shards) -> list:
    """Each class's dim-0 column norms of m and u over the whole tensors: float64 sums of squares all-reduced."""
    parts = []
    for first, count, n0, start, stop, n in blocks:
        for x in (m, u):  # (a rank's rows of a column summed in float64: no cancellation, far below fp32's ulp)
            block = _class_block(x, start, stop, count, n, n0).double()
            parts.append((first, (block * block).sum(dim=1)))
    sums = shards.pieces(parts)
    return [(sums[2 * k].sqrt().float(), sums[2 * k + 1].sqrt().float()) for k in range(len(blocks))]


def _column_norm(block):
    return torch.linalg.vector_norm(block, dim=1, dtype=torch.float32)


def _class_block(x, start, stop, count, n, n0):
    """The [count, n0, rest] view of a run of same-shape tensors in a [N, C] buffer."""
    return x[start:stop].reshape(count, -1)[:, :n].reshape(count, n0, -1)


# ---------------------------------------------------------------- T1a AGR
def agr(g: torch.Tensor, group_sum: torch.Tensor, eps: float) -> torch.Tensor:
    """g̃ = g ⊙ (1 − |g|/(S + eps)); with eps = 0 and S = 0, g is returned (upstream-compatible guard).

    A true division, as the reference: where one element holds the group's whole L1 mass (a one-element
    tensor alone in its group), α = |g|/S is exactly 1 and g̃ exactly 0; |g|·(1/S) would leave a 1-ulp
    residue that the second moment then normalises into a full-size step.
    """
    g = g.float()
    # S = 0 (upstream guard) means every g is 0: dividing by 1 there gives g̃ = g exactly
    denominator = group_sum + eps if eps > 0 else torch.where(group_sum == 0, 1.0, group_sum)
    return g * (1 - g.abs() / denominator)


# ---------------------------------------------------------------- T2 CAME-style scaling
def rms_clip_divisor(sumsq: torch.Tensor, idx: Idx, clip_threshold: torch.Tensor) -> torch.Tensor:
    """max(RMS(u)/c, 1) per tensor from Σu², with RMS = ‖u‖/(√n + 1e-10). Shape [T]."""
    rms = sumsq.sqrt() / (idx.numel_t.sqrt() + 1e-10)
    return (rms / clip_threshold.double()).clamp(min=1.0)


def came_unclipped(gt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u = g̃ ⊙ rsqrt(v) before clipping."""
    return gt * v.float().rsqrt()


def second_moment(v: torch.Tensor, gt: torch.Tensor, beta2: torch.Tensor, one_minus_beta2, eps1):
    """v ← β2·v + (1−β2)·(g̃² + ε1)."""
    return v.float() * beta2 + (gt * gt + eps1) * one_minus_beta2


def adopt_clip(gt: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """u = clamp(g̃, −t^{1/4}, t^{1/4}); bound is per row."""
    return torch.minimum(torch.maximum(gt, -bound), bound)


# ---------------------------------------------------------------- T4a TAM
def tam_upstream(m, s, u, normaliser, eps1):
    """corr = N₀(m)⊙N₀(u) = m·u·w (w from column_normaliser); s ← 0.9s + 0.1corr;
    m ← 0.9m + ((1+s)/2 + ε1)u. Returns (m, s)."""
    corr = m * u * normaliser
    s = s.float() * 0.9 + corr * 0.1
    d = ((1.0 + s) / 2.0 + eps1) * u
    return m * 0.9 + d, s


def tam_cosine_coefficient(s, dot, norm_m, norm_u):
    """Corrected TAM, per tensor: s ← 0.9s + 0.1·cos(m, u). Returns s [T]."""
    cos = dot / (norm_m.clamp(min=1e-8) * norm_u.clamp(min=1e-8))
    return s.double() * 0.9 + cos * 0.1


def tam_cosine(m, u, s_row, eps1):
    """Corrected TAM update with the per-row s: m ← 0.9m + 0.1·((1+s)/2 + ε1)u."""
    return m * 0.9 + (((1.0 + s_row) / 2.0 + eps1) * u) * 0.1


# ---------------------------------------------------------------- T5 consistency momentum
def consistency(m, u, beta1_t, one_minus_beta1_t, beta1, one_minus_beta1):
    """m ← β1_t·m + (1−β1_t)·u; m̄ = β1·m + (1−β1)·u. Returns (m, m̄)."""
    m = m * beta1_t + u * one_minus_beta1_t
    return m, m * beta1 + u * one_minus_beta1


# ---------------------------------------------------------------- T3 residual
def residual(r, u, m_bar, beta3, one_minus_beta3, eps2):
    """r ← β3·r + (1−β3)((u − m̄)² + ε2)."""
    diff = u - m_bar
    return r.float() * beta3 + (diff * diff + eps2) * one_minus_beta3


def residual_direction(m, r, eps2, inv_bias_correction=None):
    """U = m ⊙ (rsqrt(r / bc) + ε2), given 1/bc per row (None: no bias correction, as upstream)."""
    r = r if inv_bias_correction is None else r * inv_bias_correction
    return m * (r.rsqrt() + eps2)


# ---------------------------------------------------------------- T6 Grams
def grams_blend(update, gt, alpha, one_minus_alpha):
    """U ← α(|U|⊙sign(g̃)) + (1−α)U; alpha per row."""
    return alpha * (update.abs() * torch.sign(gt)) + one_minus_alpha * update


# ---------------------------------------------------------------- T7a OrthoGrad
def orthograd_sums(theta, update, idx: Idx):
    """Per tensor ⟨w,w⟩, ⟨w,v⟩, ⟨v,v⟩ of w = θ and v = U, [T] float64 (`orthograd_projection_of` takes them)."""
    w = theta.float()
    return tensor_sum(w * w, idx), tensor_sum(w * update, idx), tensor_sum(update * update, idx)


def orthograd_projection_of(ww, wv, vv):
    """Per tensor: π = ⟨w,v⟩/(⟨w,w⟩ + 1e-30) rounded to fp32 as the reference does, ν = ‖v‖, and
    whether θ is too small to project on (‖θ‖ ≤ 1e-30). Returns (π, ν, keep) [T]."""
    return wv.float() / (ww.float() + 1e-30), vv.sqrt().float(), ww.sqrt() <= 1e-30


def orthograd_projection(theta, update, idx: Idx):
    """`orthograd_projection_of` the sums of θ and U."""
    return orthograd_projection_of(*orthograd_sums(theta, update, idx))


def orthograd_perp(theta, update, proj_rows):
    """v⊥ = v − π·w, formed in fp64 and rounded once, as the reference's fused `sub(alpha=π)` does.

    When U ∥ θ (always for one-element tensors) v⊥ is pure rounding error that the rescaling blows up
    to ‖U‖, so matching that rounding is what keeps the two paths together there.
    """
    return (update.double() - proj_rows.double() * theta.float().double()).float()


def orthograd_scale(nu, perp_sumsq, parallel_tol: float = 0.0):
    """ν / (‖v⊥‖ + 1e-30) per tensor; 0 where ‖v⊥‖ ≤ parallel_tol·ν (U ∥ θ, corrected mode)."""
    perp_norm = perp_sumsq.sqrt().float()
    scale = nu / (perp_norm + 1e-30)
    return scale if parallel_tol == 0 else torch.where(perp_norm <= parallel_tol * nu, 0.0, scale)


def orthograd(theta, update, idx: Idx, parallel_tol: float = 0.0):
    """Per tensor: remove the component of U along θ and restore ‖U‖ (skipped where ‖θ‖ ≤ 1e-30)."""
    proj, nu, keep = orthograd_projection(theta, update, idx)
    perp = orthograd_perp(theta, update, per_row(proj, idx))
    scale = orthograd_scale(nu, tensor_sum(perp * perp, idx), parallel_tol)
    return torch.where(per_row(keep.double(), idx) > 0, update, perp * per_row(scale, idx))


def masked_tensor_sum(x: torch.Tensor, idx: Idx) -> torch.Tensor:
    """Per-tensor sum over the real elements (padding excluded), float64 [T]."""
    return tensor_sum(torch.where(valid_mask(idx), x.float(), 0.0), idx)


# ---------------------------------------------------------------- T8a LR mask
def warmup_mask(mask, gt, last_polarity, lr_shift, lr_bump, min_lr, max_lr):
    """Warm-up mask update. lr_shift is η − lr_max where η > lr_max, else 0 (per row). Returns (M, P).

    The polarity is kept as uint8 (0/1) and compared as float: inductor's CPU code for storing bool
    tensors is ~7× slower than the whole rest of this kernel. It is exported as bool.
    """
    polarity = (gt > 0).float()
    bumped = torch.where(last_polarity.float() == polarity, mask + lr_bump, mask - lr_bump) + lr_shift
    return bumped.clamp(min=min_lr, max=max_lr), polarity.to(torch.uint8)


def post_warmup_mask(mask, scale):
    """E = M·max(η/lr_max, 0.1) (scale = 1 where η ≥ lr_max)."""
    return mask * scale


# ---------------------------------------------------------------- T9a ALLoRA
def allora_table(row_norm: torch.Tensor, eta_term: float) -> torch.Tensor:
    """ρ = 1/sqrt(‖θ_i‖ + 1/η²) per row, float32 (computed in the norms' dtype); the dummy last entry becomes 1."""
    rho = 1.0 / torch.sqrt(row_norm + eta_term)
    return torch.cat([rho[:-1], torch.ones_like(rho[-1:])]).float()


def _matrix_classes(layout: Layout):
    """(first tensor, count, shape, first row, end row) of each run of same-shape 2-D tensors."""
    for first, count, shape in layout.shape_classes:
        if len(shape) == 2:
            start = layout.chunk_start[first]
            stop = start + count * (layout.row_slice(first).stop - start)
            yield first, count, shape, start, stop


def row_norms(theta: torch.Tensor, layout: Layout, wide: bool = False) -> torch.Tensor:
    """‖θ_i,:‖₂ of every row of the 2-D tensors: [nrows + 1] (last entry: dummy, 0). Dense: one
    [k, rows, cols] reduction per run of same-shape matrices. `wide` (the corrected mode's per-step ρ,
    reference.allora.allora_row_scaling_fixed): float64, so the float32 ρ does not depend on the summation
    order, and compiled (`wide_class_norms`); else float32 (a float64 θ rounded to float32 first) and eager,
    as upstream computes ρ once."""
    dtype = torch.float64 if wide else torch.float32
    out = torch.zeros(layout.nrows + 1, dtype=dtype, device=theta.device)
    for first, count, shape, start, stop in _matrix_classes(layout):
        block = _class_block(theta, start, stop, count, shape[0] * shape[1], shape[0])
        row0 = layout.row_start[first]
        if wide and compile_enabled():
            norms = wide_class_norms(block)
        elif wide:
            norms = torch.linalg.vector_norm(block, dim=2, dtype=dtype)
        else:
            norms = torch.linalg.vector_norm(block.float() if block.dtype == torch.float64 else block, dim=2)
        out[row0 : row0 + count * shape[0]] = norms.reshape(-1)
    return out


SHORT_ROW = 32  # rows this short are summed column by column (see wide_class_norms)


@functools.partial(compiled, stores_states=False)
def wide_class_norms(block: torch.Tensor) -> torch.Tensor:
    """‖row‖₂ of a [k, rows, cols] block, summed in float64. Eager, this reduction was half of a LoRA step's
    time (42 of 80 ms for 1,400 tensors, both factor shapes); compiled, a long row takes 0.8 ms for 8.6M
    elements, but inductor's CPU code for a reduction over a short inner dim is slow (15 ms for 16-element
    rows), so a short row is summed as `cols` strided column passes instead (2.7 ms)."""
    cols = block.shape[-1]
    if cols > SHORT_ROW:
        return torch.linalg.vector_norm(block, dim=2, dtype=torch.float64)
    total = block[..., 0].double().square()
    for j in range(1, cols):
        total = total + block[..., j].double().square()
    return total.sqrt()


def expand_rows(table: torch.Tensor, layout: Layout, out: torch.Tensor) -> torch.Tensor:
    """Write ρ of every element's row into `out` ([N, C] float32; 1 outside 2-D tensors). Eager: one
    broadcast write per run of same-shape matrices, so the fused step multiplies instead of gathering."""
    out.fill_(1.0)
    for first, count, shape, start, stop in _matrix_classes(layout):
        row0 = layout.row_start[first]
        rho = table[row0 : row0 + count * shape[0]].float().view(count, shape[0], 1)
        _class_block(out, start, stop, count, shape[0] * shape[1], shape[0]).copy_(rho.expand(-1, -1, shape[1]))
    return out


# ---------------------------------------------------------------- T10 adaptive weight decay
def decay_factor(abs_mean, mu, sigma, eps: float):
    """ϑ = 2/(1 + exp(−4z)), z = (mean|g| − μ)/(σ + eps); σ = 0 gives ϑ = 1 when eps = 0. [T]."""
    z = (abs_mean - mu) / (sigma + eps)
    theta = 2 / (1 + torch.exp(-4.0 * z))
    return theta if eps > 0 else torch.where(sigma == 0, torch.ones_like(theta), theta)


def apply_decay(theta, lr_eff, weight_decay, factor_row):
    """θ ← θ ⊙ (1 − E·wd·ϑ), in fp32 or θ's wider dtype."""
    return at_least_fp32(theta) * (1 - lr_eff * weight_decay * factor_row)
