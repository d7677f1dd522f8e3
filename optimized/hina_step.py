"""The fused HinaAdamW step over one bucket (readable twin: reference.hina_adamw, spec O9).

Per-tensor scalars that the reference takes as 0-d tensors (the AGR factor, the TAM alignment and factor,
the SPD ratio) are computed between the passes on [T] tensors, in the dtype the reference computes them
in, so their roundings are the reference's. The passes, all compiled:
1. `gradient_sums`: per tensor Σ|g| (the NaN/Inf check), Σg, Σg², and with OrthoGrad ⟨θ,g⟩, ⟨θ,θ⟩;
   then, with OrthoGrad, `projected_sums`: Σg⊥, Σg⊥² of the projected gradient AGR is applied to.
2. `tam_sums` (TAM): ⟨m_t, g̃⟩, ‖m_t‖², ‖g̃‖² of this step's momentum, which is not stored yet; from them
   `tam_factor` (not compiled, on [T] tensors) gives the damping factor and the new alignment.
3. `main_pass`: moments, U, the TAM/Grams/Cautious transforms, θ ← θ − step·U, the weight decay, and
   the writes of m and v (in place: the stale v̄ is v as loaded); with SPD it also returns ‖θ − θ0‖²,
   ‖θ‖² of the new θ.
4. `spd_pass` (SPD): θ ← θ − η·λ·r·(θ − θ0).

The tensors that step run the passes as one partition, or with ADOPT as two (t = 1; t > 1, whose denominator
is one step stale), each with its own `Flags`; a pass reads the per-tensor numbers as `PerTensor`'s fields.
A state is a plain tensor or a `codec.QState` (optim_bits=8), read and written through codec.load/store.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from reference.roundoff_floor import floor_roundoff

from . import codec as C
from . import kernels as K
from .compile import compiled
from .tables import constants


class PerTensor(NamedTuple):
    """What a pass reads per tensor: [T] float32, 0 for a tensor outside the partition being stepped."""

    member: torch.Tensor  # 1: the tensor steps in this partition
    step: torch.Tensor  # η·√(1 − β2^t)/(1 − β1^t), times the LoRA factor
    decay: torch.Tensor  # η·wd, times the T14 multiplier
    proj: torch.Tensor  # OrthoGrad's π (0: g as it is)
    agr: torch.Tensor  # AGR's factor (1: g as it is; 0: g ∥ θ under OrthoGrad, corrected mode)
    tam: torch.Tensor  # TAM's factor
    spd: torch.Tensor  # η·λ·r of SPD (0: θ as it is)


class Consts(NamedTuple):
    """The group's numbers: 0-d float32 (1 − β taken in float64 first, as the reference's scalars)."""

    beta1: torch.Tensor
    one_minus_beta1: torch.Tensor
    beta2: torch.Tensor
    one_minus_beta2: torch.Tensor
    eps: torch.Tensor
    floor: torch.Tensor  # the group's round-off floor (fixed mode; read only with Flags.roundoff)


class Flags(NamedTuple):
    stale: bool  # use_adopt_stability and t > 1: the denominator is one step stale (v̄ = v as loaded)
    floor: bool  # fixed mode: the stale denominator is √max(v̄, v) + ε
    roundoff: bool  # fixed mode: gradient elements at or below the round-off floor read as 0
    orthogonal: bool
    tam: bool
    grams: bool
    cautious: bool
    masked: bool  # some tensor of the bucket has no gradient this step
    padding_safe: bool  # ε > 0 and no 8-bit state: padding stays 0 without masks


class Buffers(NamedTuple):
    theta: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    anchor: torch.Tensor | None  # θ0 of SPD
    blocks: C.Blocks | None = None  # the block index of the QState buffers (optim_bits=8)


def group_constants(group, floor: torch.Tensor | None, device) -> Consts:
    beta1, beta2 = group["betas"]
    values = [beta1, 1 - beta1, beta2, 1 - beta2, group["eps"]]
    floor = torch.zeros((), device=device) if floor is None else floor.float()
    return Consts(*constants(values, device, torch.float32), floor)


def _rounded(x, dtype):
    """x rounded to a bf16/fp16 gradient's dtype, as the reference's op in that dtype rounds it."""
    return x if dtype == torch.float32 else x.to(dtype).float()


def _projected(theta, grad, tab: PerTensor, c: Consts, idx: K.Idx, f: Flags):
    """g, or with OrthoGrad g⊥ = g − π·θ (π = 0 where the reference leaves g as it is), of the gradient with its
    round-off elements as 0 (fixed mode, reference.roundoff_floor). Where g is nearly parallel to θ, g⊥'s sign
    rests on these roundings, and Cautious masks by that sign."""
    g = grad.float()
    if f.roundoff:
        g = floor_roundoff(g, c.floor)
    if not f.orthogonal:
        return g
    return _rounded(g - _rounded(K.per_row(tab.proj, idx) * theta.float(), grad.dtype), grad.dtype)


def _agr(theta, grad, tab: PerTensor, c: Consts, idx: K.Idx, f: Flags):
    """g̃ = g·(1 + |Σg|/‖g‖) (the factor is 1 where the reference leaves g as it is), rounded to the gradient
    dtype as the reference's g̃ is: 8-bit m and v take it from there in fp32, so a bf16 rounding left out
    would move codes (these passes compile with emulated precision casts, see compile.compiled)."""
    return _rounded(_projected(theta, grad, tab, c, idx, f) * K.per_row(tab.agr, idx), grad.dtype)


def _gradient_sums(theta, grad, idx: K.Idx, orthogonal: bool):
    g = grad.float()
    out = {"abs": K.tensor_sum(g.abs(), idx), "sum": K.tensor_sum(g, idx), "sq": K.tensor_sum(g * g, idx)}
    if orthogonal:
        w = theta.float()
        out["wg"], out["ww"] = K.tensor_sum(w * g, idx), K.tensor_sum(w * w, idx)
    return out


def _floored_sums(theta, grad, floor, idx: K.Idx, orthogonal: bool):
    """`_gradient_sums` of the gradient with its round-off elements as 0 (fixed mode): the per-tensor statistics
    (AGR's Σg/‖g‖, OrthoGrad's π) the reference takes of the gradient it reads."""
    return _gradient_sums(theta, floor_roundoff(grad.float(), floor), idx, orthogonal)


def _projected_sums(theta, grad, tab: PerTensor, c: Consts, idx: K.Idx, f: Flags):
    g = _projected(theta, grad, tab, c, idx, f)
    return K.tensor_sum(g, idx), K.tensor_sum(g * g, idx)


def _momentum(b: Buffers, gt, c: Consts):
    """m_t = β1·m + (1−β1)·g̃."""
    return C.load(b.exp_avg, b.blocks).float() * c.beta1 + gt * c.one_minus_beta1


def _tam_sums(b: Buffers, tab: PerTensor, idx: K.Idx, c: Consts, f: Flags):
    gt = _agr(b.theta, b.grad, tab, c, idx, f)
    m = _momentum(b, gt, c)
    if not f.padding_safe:  # 8-bit padding codes need not decode to 0 (a loaded state leaves them as they are)
        m = torch.where(K.valid_mask(idx), m, 0.0)
    return K.tensor_sum(m * gt, idx), K.tensor_sum(m * m, idx), K.tensor_sum(gt * gt, idx)


def tam_factor(dot, mm, gg, alignment, tam_beta: float, bias_correction=None):
    """T4e on [T] tensors (readable twin: reference.tam.tam_damping) → (factor float64, A_new), in the state
    dtype of `alignment`: a = ⟨m_t, g̃⟩/(‖m_t‖‖g̃‖) (0 if a norm is 0), A ← τβ·A + (1−τβ)·a, factor (1 + Â)/2
    with Â = A, or A/(1 − τβ^t) given `bias_correction` = 1 − τβ^t (float32, taken as torch takes a Python
    scalar)."""
    dtype = alignment.dtype
    m_norm, g_norm = mm.sqrt().to(dtype), gg.sqrt().to(dtype)
    a = torch.where((m_norm > 0) & (g_norm > 0), dot.to(dtype) / (m_norm * g_norm), 0)
    new = tam_beta * alignment + (1 - tam_beta) * a
    corrected = new if bias_correction is None else (new.float() / bias_correction).to(dtype)
    return ((1 + corrected) / 2).double(), new


def _main_pass(b: Buffers, tab: PerTensor, idx: K.Idx, c: Consts, f: Flags, spd: bool):
    tensors = (tab.member > 0) if f.masked else None
    rows = None if tensors is None else tensors[idx.chunk_tensor].view(-1, 1)
    valid = None if f.padding_safe else K.valid_mask(idx)
    gt = _agr(b.theta, b.grad, tab, c, idx, f)

    # T13: v ← β2·v + (1−β2)·g̃²; m ← β1·m + (1−β1)·g̃; denom = √v̄ + ε (t > 1, v̄ = v as loaded), else √v + ε
    v_old = C.load(b.exp_avg_sq, b.blocks).float()
    v = v_old * c.beta2 + gt * gt * c.one_minus_beta2
    m = _momentum(b, gt, c)
    second = v
    if f.stale:
        second = torch.maximum(v_old, v) if f.floor else v_old
    update = m / (second.sqrt() + c.eps)
    # T4e TAM damping, T6 Grams, T12 Cautious
    if f.tam:
        update = update * K.per_row(tab.tam, idx)
    if f.grams:
        update = update.abs() * torch.sign(gt)
    if f.cautious:
        update = update * (update * gt > 0).float()
    if valid is not None:
        update = torch.where(valid, update, 0.0)

    # θ ← θ − step·U (step with the LoRA factor); θ ← θ − η·wd·m_t·θ, in θ's dtype where it is wider than fp32
    # (an fp64 θ keeps fp64 precision, as the reference's in-place updates of p keep it)
    old_theta = K.at_least_fp32(b.theta)
    theta = old_theta - K.per_row(tab.step, idx) * update
    theta = theta - K.per_row(tab.decay, idx) * theta
    b.theta.copy_(theta if rows is None else torch.where(rows, theta, old_theta))

    valid = K.valid_mask(idx) if isinstance(b.exp_avg, C.QState) else None
    C.store(b.exp_avg, m, b.blocks, rows, tensors, valid)
    C.store(b.exp_avg_sq, v, b.blocks, rows, tensors, valid)
    if spd:  # ‖θ − θ0‖², ‖θ‖² of the new θ in fp64, as the reference's norms accumulate on the CPU (a θ past
        # 1.8e19 — ADOPT after an all-zero first gradient — squares to inf in fp32; outside the partition: spd = 0)
        diff, wide = (theta - K.at_least_fp32(b.anchor)).double(), theta.double()
        return K.tensor_sum(diff * diff, idx), K.tensor_sum(wide * wide, idx)
    return None


def _spd_pass(theta, anchor, tab: PerTensor, idx: K.Idx):
    """T11d: θ ← θ − (η·λ·r)·(θ − θ0)."""
    t = K.at_least_fp32(theta)
    theta.copy_(t - K.per_row(tab.spd, idx) * (t - K.at_least_fp32(anchor)))


gradient_sums = compiled(_gradient_sums)
floored_sums = compiled(_floored_sums)
projected_sums = compiled(_projected_sums, exact_casts=True)
tam_sums = compiled(_tam_sums, stores_states=False, exact_casts=True)
main_pass = compiled(_main_pass, exact_casts=True)
spd_pass = compiled(_spd_pass)
