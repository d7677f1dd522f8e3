"""Every tolerance of the equivalence suite, in one table.

Error metric (`scaled_error`): max |optimized − reference| / max |reference| over one tensor, the
worst over all tensors of a case. It is relative to the tensor's scale, so elements near zero do not
dominate. Each entry gives the bound, why it is not zero, and the worst error observed when it was
set (`python -m equivalence_tests.verify` prints the current values).

Free-running bounds are measured, not only chosen. A free run carries the fast path's one-step round-off on, and
where the run meets a decision (a polarity, clip, code or sign that flips) or a normalising update that turns a
cancellation into a full step, what it grows depends on the CPU's summation order, not on the algorithm: a bound
that holds on one machine's rounding then fails on another's (issue 23: 1.03e-2 against 1e-3 on an AVX-512
machine). So each free-running check (harness.assert_free_running) passes at or below its fixed bound below, or
else at or below SELF_DIVERGENCE × the reference's own drift over the same run: the reference against a second
copy of itself whose inputs (θ, g) and group sums get one rounding error each step, and in half of the
perturbations whose 8-bit codes at a near-tie take the other side (harness.RoundingPerturbed).
The bound then states "the fast path diverges no more than the reference does from itself", on every CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    bound: float
    reason: str
    observed: str


# Pure technique kernels, fp32 inputs, one application.
TECHNIQUE_FP32 = Tolerance(
    bound=2e-6,
    reason="multiplication by a reciprocal instead of division (AGR α, the RMS clip, bias correction), "
    "and per-tensor sums taken in another order (fp32 rows of 256, then fp64); a value that sums terms which "
    "can cancel (TAM's s and m, momentum EMAs, Grams) is scaled by its terms' magnitude, not its own",
    observed="3.6e-7 (OrthoGrad), make verify's shape sets (2026-12-05); unscaled, a 0-d TAM s where the terms "
    "cancelled to 7e-4 was 1.1e-5 of itself (one rounding of 0.1)",
)

# ALLoRA's per-step row norms (corrected mode): the compiled float64 sum of a row's squares against torch's
# eager float64 vector_norm, relative, per element of the row (a sum of n positive terms in another order).
ROW_NORM_FP64_PER_TERM = Tolerance(
    bound=2**-52,
    reason="each of the n − 1 additions of positive float64 terms rounds by at most one unit (2^-53) in either "
    "order, so the two sums differ by at most n·2^-52 relative, and the square roots by half that",
    observed="2.1e-14 absolute on 768-term rows of norm ~28 (3.4e-17 relative per term), 1.8e-15 on 16-term "
    "rows (2026-12-04)",
)

# Whole optimizer, one step from identical state, fp32 parameters (lockstep).
LOCKSTEP_FP32 = Tolerance(
    bound=5e-6,
    reason="round-off of the kernels above, through one step; exp_avg_res is the worst: (u − m̄)² loses "
    "relative accuracy where u ≈ m̄",
    observed="2.3e-6 (exp_avg_res) on the registry cases (2026-11-22)",
)

# Whole optimizer, bf16 parameters and (upstream mode) bf16 states, lockstep.
LOCKSTEP_BF16 = Tolerance(
    bound=0.12,
    reason="upstream rounds to bf16 after every operation (8 significant bits); the fused kernel "
    "computes in fp32 and rounds once per stored value. Where a result is the difference of terms "
    "~10× larger (a one-element momentum, m = β1_t·m + (1−β1_t)·u), the terms' rounding is ~10 ulps of "
    "the result: 13 ulps were seen on the 0-d parameter; multi-element tensors stay near 2.8e-2",
    observed="9.0e-2 (exp_avg of the 0-d parameter, full_finetune case, upstream) (2026-11-22)",
)

# Whole optimizer, free-running for 2×W steps (W = 20), fp32.
FREE_RUNNING_FP32 = Tolerance(
    bound=1e-6,
    reason="lockstep round-off accumulates over the run (up to 40 steps, every phase); the discrete "
    "polarity and clip decisions did not flip in the calibration runs",
    observed="1.25e-7 (2026-11-22)",
)

# Whole optimizer, free-running, bf16 parameters.
FREE_RUNNING_BF16 = Tolerance(
    bound=3e-2,
    reason="bf16 rounding differences (see LOCKSTEP_BF16) accumulate over the run; parameters are "
    "compared, and a parameter is one bf16 ulp (3.9e-3 relative) from its neighbour value",
    observed="1.76e-2 (lr 1e-2 case, upstream); fixed mode 2.0e-3 (2026-11-22)",
)


# How far the fast path may drift from the reference over a free run, in units of how far the reference drifts
# from itself: harness.RoundingPerturbed gives a second reference copy a relative error of at most one unit
# round-off on every gradient element before each step (one rounding of the input), and the two references'
# worst parameter error over the same run is the reference's own sensitivity to rounding. Lockstep shows that
# the fast path's one-step error is round-off of that order (a few ulps of each operation), so whatever
# free-running error the run grows from that (a flipped polarity, clip, code or sign decision, amplified by a
# normalising update) the reference grows from its own rounding too. A free-running check passes at or below
# its fixed bound, or else at or below this factor × the measured drift (harness.assert_free_running).
SELF_DIVERGENCE = Tolerance(
    bound=10.0,
    reason="the largest ratio fast-path error / reference's own drift seen where the fixed bound was exceeded was "
    "3.2 (COptim upstream bf16 lockstep); 10 leaves a factor 3 for other CPUs' rounding",
    observed="ratios 0.08-3.2 over ~1,200 random draws; the one outlier, Automagic_CameAMP8bit fixed fp64 "
    "lockstep 291, was a codec rounding difference, fixed (2026-12-03). The drift is the largest over "
    "harness.SELF_PERTURBATIONS: one perturbation is a noisy sample (Improved fixed fp64, one draw: "
    "8e-5..1.1e-3 over five seeds, fast path 1.75e-3) (2026-12-03). A fast path's 8-bit code at a near-tie: "
    "CI's CPU failed 1.03e-2 against 10 × 6.1e-4 (seed 004 upstream fp32) and 2.49e-4 against 10 × 7.2e-7 "
    "(Automagic_CameAMP8bit, flipping requires_grad), where the perturbed runs took the reference's side; on "
    "this machine's (AVX-512) they take the other (drifts 1.03e-2 and 2.49e-4) and the eager fast path the "
    "reference's. Each perturbation now runs both ways, so both sides are measured on every CPU (here the "
    "flipped runs drift 3e-4..6e-4 and 4.3e-5..2.49e-4); the free runs beyond their fixed bound in make test are at "
    "ratios 1e-5..0.59, only seed 004's transformer client's drift widened (0.030 → 0.055) (2026-12-06)",
)


# A paper's reference optimizer against its oracle (the authors' package, pytorch-optimizer or torch),
# fp32, 120 free-running steps on 1-D, 2-D and 4-D parameters, parameters and states.
ORACLE_FP32 = Tolerance(
    bound=1e-5,
    reason="the same formulas with operations in another order (lerp vs mul+add for the EMAs, the "
    "reconstruction's rsqrt of a product vs a product of rsqrts, division vs multiplication by a "
    "reciprocal); round-off then accumulates over the run",
    observed="1.3e-6 (CAME: V is the rsqrt of a product here, a product of rsqrts in the official code); "
    "Adafactor 6.9e-8, ⊥AdamW 1.1e-7; AdamW, AdaBelief, ADOPT (± cautious), Grams, TAM bit-identical (2026-11-22)",
)


# ALLoRA's rescaled adapter gradients against the same products formed from ∂L/∂(BA), float64.
ALLORA_GRADIENT_FP64 = Tolerance(
    bound=1e-13,
    reason="the same sums of products associated differently (Bᵀ(δ⊙s)ᵀx vs Bᵀ·diag(s)·δᵀx); float64 "
    "so that a wrong row scale (≥ 1e-3 relative) cannot hide in fp32 round-off",
    observed="5.7e-16 over 20 random layers (2026-11-23); fp32 gives 2.9e-7",
)


# ---------------------------------------------------------------- 8-bit states (Automagic_CameAMP8bit)
def _one_code_scaled() -> float:
    """The largest gap between adjacent codes over the smallest end code's magnitude (|code[0]| = 0.993)."""
    from reference.blockwise_8bit import code_table

    code = code_table()
    return float(code.diff().max() / code[0].abs())


# From identical state, the fused step and the reference quantise fp32 values that differ by round-off;
# where one lands on a bin edge the two codes are neighbours, one gap·N_b apart. The scaled error divides by
# the tensor's largest de-quantised magnitude, at least |code[0]|·N_b = 0.993·N_b (a block whose absmax
# element is negative), so one flip is at most gap/0.993.
LOCKSTEP_8BIT_STATES = Tolerance(
    bound=_one_code_scaled() + 1e-6,
    reason="one code apart where an fp32 value is within round-off of a bin edge: the largest gap "
    "between adjacent codes (0.0141, in [0.1, 1]) over 0.993, plus the absmax's round-off",
    observed="1.4095e-2 (a negative block maximum), fp32 and bf16, both modes (2026-11-22)",
)

FREE_RUNNING_BF16_CAUTIOUS = Tolerance(
    bound=0.25,
    reason="HinaAdamW with OrthoGrad and Cautious, bf16: where g is nearly parallel to θ, g⊥ = g − πθ cancels "
    "to bf16 round-off, and the reference's π is a bf16 dot product summed in another order, so a Cautious "
    "mask element can flip: that element skips or takes one whole step. On a LoRA-B that starts at 0 one step "
    "is a large part of max|θ| in the first steps (the error then shrinks as θ grows); lockstep agrees to "
    "LOCKSTEP_BF16",
    observed="0.155 at step 3, 0.05 at step 12 (orthogonal, cautious, no adopt, eps 0; fixed) (2026-11-23); "
    "0.1547 with eps 1e-30, now that eps must be > 0 (2026-12-03)",
)

LOCKSTEP_8BIT_FLIPS = Tolerance(
    bound=1e-4,
    reason="fraction of codes that differ after one lockstep step: only values within fp32 round-off "
    "of a bin edge (bins are 3e-5 wide) flip",
    observed="2.6e-5 (came=False, bf16, fixed) (2026-11-22)",
)

LOCKSTEP_8BIT_FLIPS_SMALL_SETS = Tolerance(
    bound=4e-4,
    reason="as LOCKSTEP_8BIT_FLIPS, on the Improved_8Bit and HinaAdamW tests' few codes (3,072-20,000 per step, "
    "the compiled sets the fewest; HinaAdamW 8,136 since v̄ is no longer stored): one flipped code of 3,072 is "
    "3.3e-4, over the larger sets' fraction bound",
    observed="3.26e-4 (one code, edges-fire case, compiled upstream fp32); eager sets 3.5e-5 (2026-11-23); "
    "HinaAdamW 1.23e-4 (one code, bf16) (2026-11-23)",
)

# Upstream's residual is never stored [I-08]: each step r = (1−β3)((u − m̄)² + ε2) and U = m/√r, so U's
# relative error is the round-off of u − m̄ amplified by |u|/|u − m̄|, unbounded where u ≈ m̄. Steps
# are 10³–10⁵× lr there, and two fp32 implementations of the same formula disagree in the 2nd-3rd digit.
LOCKSTEP_8BIT_UPSTREAM = Tolerance(
    bound=5e-2,
    reason="round-off amplified by upstream's fresh residual (above); parameters, fp32. bf16 parameters "
    "are not compared in upstream mode: upstream also does that arithmetic in bf16, and the two differ by "
    "more than the parameters' scale",
    observed="1.99e-2 lockstep, 1.99e-2 free-running (lr 1e-4, W=20) (2026-11-22)",
)

FREE_RUNNING_8BIT_FP32 = Tolerance(
    bound=1e-3,
    reason="code flips (LOCKSTEP_8BIT_FLIPS) change the states by one code, and the run carries them on; "
    "parameters, fixed mode, fp32, up to 40 steps",
    observed="1.57e-4 (lr 1e-2, max_lr 5e-2, W=10) (2026-11-22)",
)

FREE_RUNNING_8BIT_UPSTREAM_TAM = Tolerance(
    bound=1e-2,
    reason="COptim8bit, upstream mode (no fresh residual): upstream TAM's element-wise s is an 8-bit state "
    "too, and a flipped code of s moves m by up to 0.05·|x|, which the run carries on; parameters, fp32",
    observed="2.7e-3 (lr 1e-2, max_lr 5e-2, W=10), 1.3e-4 at lr 1e-3 (2026-11-22)",
)

# ---------------------------------------------------------------- seed 004's block min/max states
# Compared by the effective value D(q) + e (test_seed004_equivalence.effective): where two targets differ by
# round-off and a code flips, e takes up the step, so with error feedback the states meet LOCKSTEP_FP32.
# Without feedback D(q) is compared: a flip moves it one step s_b = (max_b − min_b)/255 ≤ 2·max|x|/255.
LOCKSTEP_MINMAX_NO_FEEDBACK = Tolerance(
    bound=2 / 255 + 1e-6,
    reason="error_correction=False: one code step where a target is within round-off of a rounding edge "
    "(a block spanning −max|x|..max|x| at most), plus round-off",
    observed="5.7e-3 (exp_avg, fixed bf16), 3.9e-3 (edge_history, upstream fp32) (2026-11-23)",
)

LOCKSTEP_MINMAX_CODE_STEPS = Tolerance(
    bound=1.0 + 1e-3,
    reason="de-quantised states D(q) of the two runs, in code steps (test_seed004_equivalence.code_steps): a "
    "code flips to its neighbour where a target is within round-off of a rounding edge; the per-element "
    "step of D = q·s + z rounds too; fp32 arithmetic (both modes in fp32, fixed mode in bf16)",
    observed="1.000 (several cases) (2026-11-23)",
)

LOCKSTEP_MINMAX_CODE_STEPS_BF16_UPSTREAM = Tolerance(
    bound=2.0,
    reason="upstream mode, bf16 parameters: g̃ and the terms made from it are rounded to bf16 (8 significant "
    "bits, the codes' own resolution of ~1/255 of a block's range), so the two runs' targets can be a bf16 "
    "ulp of the block's largest value apart, up to two code steps; the effective states meet LOCKSTEP_BF16",
    observed="1.059 (came=False case) (2026-11-23)",
)

FREE_RUNNING_MINMAX_FP32 = Tolerance(
    bound=1e-3,
    reason="the reference reads D(q) without e, so a flipped code changes the next step's input by one "
    "code step (the error then holds the difference) and the run carries it on; parameters, fp32, 16 steps "
    "(as FREE_RUNNING_8BIT_FP32)",
    observed="1.10e-4 (Vs and mask quantised, upstream), fixed mode ≤ 8.8e-6 (2026-11-23)",
)


LOCKSTEP_BF16_MULTISCALE = Tolerance(
    bound=0.6,
    reason="COptim, upstream mode, bf16: the momentum's input C is a 1/k-weighted mean of 2-4 bf16 momenta "
    "that the reference forms with 6-8 bf16 roundings (and g̃ in bf16); on the 0-d parameter m = β1_t·m + "
    "(1−β1_t)·C is then a ~100x cancellation (6e-5 from terms ~1e-2), so ~1.5 ulps of the terms are half of "
    "m. Emulating the roundings (inductor emulate_precision_casts) only brought it to 0.16: g̃'s bf16 AGR "
    "differs too. Multi-element tensors and parameters stay within LOCKSTEP_BF16",
    observed="0.516 (exp_avg of the 0-d parameter, came=False case, t = 20) (2026-11-22)",
)


def momentum_tolerance(dtype: torch.dtype, name: str, compat: str) -> Tolerance:
    """The lockstep bound of the state exp_avg (m)."""
    if dtype == torch.bfloat16 and compat == "upstream" and name == "Automagic_CameAMP_COptim":
        return LOCKSTEP_BF16_MULTISCALE
    return lockstep_tolerance(dtype)


def lockstep_tolerance(dtype: torch.dtype) -> Tolerance:
    return LOCKSTEP_BF16 if dtype == torch.bfloat16 else LOCKSTEP_FP32


def free_running_tolerance(dtype: torch.dtype) -> Tolerance:
    return FREE_RUNNING_BF16 if dtype == torch.bfloat16 else FREE_RUNNING_FP32


def scaled_error(reference, optimized, terms=None) -> float:
    """max |a − b| / max |a| for one tensor (exact match of booleans and integers; NaN must match NaN). `terms`:
    the magnitudes of the terms a sums (a tensor); where they cancel, |a| understates a's rounding, so the
    error is scaled by the larger of max |a| and max `terms`."""
    a, b = reference.detach(), optimized.detach()
    if not a.is_floating_point():
        return 0.0 if torch.equal(a, b.to(a.dtype)) else float("inf")
    if a.numel() == 0:
        return 0.0
    a64, b64 = a.double(), b.double()
    if not torch.equal(a64.isnan(), b64.isnan()):
        return float("inf")
    a64, b64 = a64.nan_to_num(0.0), b64.nan_to_num(0.0)
    diff = float((a64 - b64).abs().max())
    if diff == 0.0:
        return 0.0
    scale = float(a64.abs().max()) if terms is None else max(float(a64.abs().max()), float(terms.abs().max()))
    return diff / max(scale, 1e-30)
