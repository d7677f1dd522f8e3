"""Regression tests, one per defect that randomised differential testing found (issue 23), each over every class
it can apply to, both packages and both modes. Each defect's fix makes both packages compute the same numbers,
or refuse the input with an error naming the argument before anything changes."""

from __future__ import annotations

import warnings

import pytest
import torch

import optimized
import reference
from optimized import codec
from reference import blockwise_8bit

from .differential import CLASSES, EIGHT_BIT, Draw, Tensor, check
from .tolerances import LOCKSTEP_BF16, LOCKSTEP_FP32, scaled_error

PACKAGES = [reference, optimized]
WARMED = {name: ({} if name == "HinaAdamWOptimizer" else {"warmup_steps": 4}) for name in CLASSES}


def build(package, name, params, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(package, name)(params, **{**WARMED[name], **kwargs})


def state_snapshot(opt) -> dict:
    return {pid: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
            for pid, s in opt.state_dict()["state"].items()}  # fmt: skip


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for pid in a:
        assert a[pid].keys() == b[pid].keys()
        for key, value in a[pid].items():
            assert torch.equal(value, b[pid][key]) if torch.is_tensor(value) else value == b[pid][key], key


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", ["Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit"])
def test_coptim_with_losses_and_a_missing_gradient(name, compat):
    """Fixed mode's context signal had one entry per gradient present, so a step where a parameter had none gave
    a shorter signal, and the gradient consistency's cosine of consecutive signals raised a size mismatch once the
    loss history was long enough (a constant loss: the edge test reads the consistency)."""
    shapes = [(4, 5), (3,), (2, 2)]  # signals of 3 and 2 entries (a length-1 signal would broadcast)
    finals = []
    for package in PACKAGES:
        params = [torch.nn.Parameter(torch.full(s, 0.5)) for s in shapes]
        opt = build(package, name, params, compat=compat, lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        for t in range(14):
            for i, p in enumerate(params):
                g = torch.randn(p.shape, generator=gen)
                p.grad = None if (i == 1 and t % 3 == 1) else g
            opt.step(loss=1.0)
        finals.append(params)
    assert max(map(scaled_error, *finals)) <= LOCKSTEP_FP32.bound


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", [n for n in CLASSES if n != "HinaAdamWOptimizer"])
def test_no_warmup_steps(name, compat):
    """warmup_steps=0: optimized Improved_8Bit divided by W for its warm-up ramp (ZeroDivisionError at step 1)."""
    d = Draw(name, compat, torch.float32, {"warmup_steps": 0, "lr": 1e-3, "min_8bit_size": 0} if "Improved_8Bit" in
             name else {"warmup_steps": 0, "lr": 1e-3}, (Tensor("a.weight", (6, 5)), Tensor("b.weight", (7,))),
             (0, 0), 5, frozenset(), False, 0)  # fmt: skip
    assert check(d) == []


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", CLASSES)
def test_zero_eps_is_refused(package, name):
    """ε = 0 passed validation; an exactly-zero gradient element (a zero-initialised LoRA B) then divided 0 by 0."""
    p = torch.nn.Parameter(torch.zeros(4, 3))
    eps = 0.0 if name == "HinaAdamWOptimizer" else (1e-30, 0.0, 1e-8)
    with pytest.raises(ValueError, match="eps"):
        build(package, name, [p], eps=eps)


@pytest.mark.parametrize("shape", [(10, 20), (16, 16)])  # 32- and 256-element rows (optimized.layout.row_width)
@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", CLASSES)
def test_group_sum_overflow_is_not_a_nonfinite_gradient(name, compat, shape):
    """Finite gradients whose Σ|g| overflows fp32 (1e37 over 200 or 256 elements): the optimized classes read the
    overflowed sum as a NaN/Inf gradient and raised, where the reference steps. Both now step, to the same
    parameters (NaN where the reference's g² overflows too), whether or not one row's float32 sum overflows."""
    finals = []
    for package in PACKAGES:
        p = torch.nn.Parameter(torch.full(shape, 0.5))
        opt = build(package, name, [p], compat=compat, lr=1e-3)
        p.grad = torch.full(shape, 1e37)
        opt.step()
        assert state_snapshot(opt)[0]["step"] == 1
        finals.append(p)
    assert scaled_error(*finals) <= LOCKSTEP_FP32.bound


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=str)
@pytest.mark.parametrize("name", CLASSES)
def test_one_element_tensor_alone_in_its_group(name, shape):
    """AGR of a tensor holding its group's whole L1 mass: α = |g|/S is exactly 1 in the reference, so g̃ = 0; the
    optimized classes multiplied by 1/S and kept a 1-ulp residue, which the second moment scaled to full-size
    steps (lockstep error 0.28). Fixed mode (upstream's OrthoGrad of a one-element tensor is rounding noise)."""
    tensors = (Tensor("a.weight", shape), Tensor("b.weight", (5, 3)))
    for seed in range(4):  # x·(1/x) is 1 for most x: ~14% of fp32 values leave the residue
        assert check(Draw(name, "fixed", torch.float32, dict(WARMED[name], lr=1e-2), tensors, (0, 1), 10,
                          frozenset(), False, seed)) == []  # fmt: skip


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("name", CLASSES)
def test_float64_parameters(name, compat):
    """float64 matrices crashed every optimized flat-buffer class (row norms asked for a float32 result of a
    float64 input)."""
    shapes = (Tensor("a.weight", (6, 5)), Tensor("b.weight", (7,)), Tensor("c.weight", (2, 3, 3, 3)))
    d = Draw(name, compat, torch.float64, dict(WARMED[name], lr=1e-3), shapes, (0, 0, 0), 9, frozenset(), False, 2)
    assert check(d) == []


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_float64_parameters_keep_float64_precision(package, name):
    """A step applies its update to an fp64 θ in fp64: the fast HinaAdamW, Improved and seed 004's 8Bit wrote θ
    back as its fp32 rounding at every step (the fixed mode's states are fp32; the reference subtracts the update
    from θ in θ's dtype), so an fp64 run kept fp32 precision, unseen under the free-running bounds. After the
    warm-up (SPD, which the reference computes in the state dtype, is off) θ is not its own fp32 rounding."""
    gen = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64)) for shape in ((6, 5), (7,))]
    kwargs = {} if name == "HinaAdamWOptimizer" else {"warmup_steps": 0}
    opt = build(package, name, params, compat="fixed", lr=1e-3, **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        opt.step()
    for p in params:
        assert not torch.equal(p.detach(), p.detach().float().double())


@pytest.mark.parametrize("name", ["Automagic_CameAMP", "Automagic_CameAMP8bit", "Automagic_CameAMP_COptim",
                                  "Automagic_CameAMP_COptim8bit"])  # fmt: skip
def test_row_scaling_of_a_parameter_without_gradient_is_kept(name):
    """Fixed mode recomputes ALLoRA's ρ from the rows of the tensors that step; the optimized classes also
    recomputed it for tensors without a gradient that step (error up to 7e-3)."""
    missing = frozenset((t, 1) for t in range(2, 12, 2))
    d = Draw(name, "fixed", torch.float32, {"warmup_steps": 4, "lr": 1e-2, "max_lr": 5e-2},
             (Tensor("a.weight", (8, 6)), Tensor("b.weight", (6, 9))), (0, 0), 12, missing, False, 3)  # fmt: skip
    assert check(d) == []
    states = []
    for package in PACKAGES:
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
                  for i, s in enumerate([(8, 6), (6, 9)])]  # fmt: skip
        opt = build(package, name, params, compat="fixed", lr=1e-2)
        for t in range(1, 4):
            params[0].grad, params[1].grad = torch.ones(8, 6), (torch.ones(6, 9) if t == 1 else None)
            with torch.no_grad():
                params[1].mul_(2.0)  # rows change; ρ of a tensor that does not step must not follow them
            opt.step()
        states.append(opt.state_dict()["state"][1])
    key = "row_scaling_q" if name in EIGHT_BIT else "row_scaling"
    assert torch.equal(states[0][key], states[1][key])


@pytest.mark.parametrize("name", ["Automagic_CameAMP8bit", "Automagic_CameAMP_COptim8bit"])
def test_zero_dim_states_of_8bit_classes_are_fp32(name):
    """Upstream mode, bf16: the 8-bit classes' states are fp32 before quantisation; a 0-d parameter (never
    quantised) kept them in fp32 in the reference and in bf16 in the optimized class."""
    dtypes = []
    for package in PACKAGES:
        params = [torch.nn.Parameter(torch.tensor(0.5, dtype=torch.bfloat16)),
                  torch.nn.Parameter(torch.full((300,), 0.5, dtype=torch.bfloat16))]  # fmt: skip
        opt = build(package, name, params, compat="upstream")
        for _ in range(3):
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        dtypes.append({k: v.dtype for k, v in opt.state_dict()["state"][0].items() if torch.is_tensor(v)})
    assert dtypes[0] == dtypes[1]
    assert all(d in (torch.float32, torch.bool) for d in dtypes[0].values())


SWITCHES = {name: ["came", "full_finetune"] for name in CLASSES}
SWITCHES["HinaAdamWOptimizer"] = ["use_cautious", "use_spd", "use_grams"]
SWITCHES["Automagic_CameAMP_8Bit"] += ["quantize_states", "error_correction"]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name,switch", [(n, s) for n in CLASSES for s in SWITCHES[n]])
def test_switches_must_be_bools(package, name, switch):
    """came='yes' (or sd-scripts' unparsed 'false') was accepted, then failed in numpy at step 1 or meant True."""
    with pytest.raises(TypeError, match=switch):
        build(package, name, [torch.nn.Parameter(torch.randn(3))], **{switch: "false"})


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", CLASSES)
def test_duplicate_parameter_is_refused(package, name):
    """The same tensor twice in a group was stepped twice by the reference, differently (or with a KeyError) by
    the optimized classes."""
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="more than once"):
        build(package, name, [p, p])
    opt = build(package, name, [torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [p, p]})
    opt.add_param_group({"params": (q for q in [p])})  # an iterator is still taken whole
    assert opt.param_groups[-1]["params"] == [p]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", CLASSES)
def test_wrong_shape_gradient_is_refused_before_anything_moves(package, name):
    """A gradient of another shape in the second group raised only after the first group had stepped (and
    `step` was incremented)."""
    a, b = torch.nn.Parameter(torch.full((4, 3), 0.5)), torch.nn.Parameter(torch.full((5,), 0.5))
    opt = build(package, name, [{"params": [a]}, {"params": [b]}])
    for _ in range(2):
        a.grad, b.grad = torch.ones(4, 3), torch.ones(5)
        opt.step()
    before, weights = state_snapshot(opt), (a.detach().clone(), b.detach().clone())
    a.grad, b.grad = torch.ones(4, 3), torch.ones(5)
    b.grad.data = torch.ones(6)  # what a shape-changing hook could leave; `p.grad = ...` itself checks shape
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    assert_same_state(before, state_snapshot(opt))
    assert torch.equal(a, weights[0]) and torch.equal(b, weights[1])


def bin_edge_values(absmax: float, ulps: int = 2) -> torch.Tensor:
    """Blocks whose values lie within `ulps` fp32 steps of every normalised value where bitsandbytes' lookup
    moves to the next code (the centre between two of its table bins), the block's absmax first."""
    lut = blockwise_8bit.code_lookup_table()
    changes = torch.nonzero(lut[1:] != lut[:-1]).flatten() + 1  # first bin of each new code
    edges = ((changes.double() - 0.5) / (blockwise_8bit.TABLE_BINS - 1) * 2 - 1).float() * absmax
    near, up, down = [edges], edges, edges
    for _ in range(ulps):
        up, down = torch.nextafter(up, torch.tensor(float("inf"))), torch.nextafter(down, torch.tensor(-float("inf")))
        near += [up, down]
    values = torch.cat(near)
    blocks = values.split(blockwise_8bit.BLOCKSIZE - 1)
    return torch.cat([torch.cat([torch.tensor([absmax]), b]) for b in blocks])


@pytest.mark.parametrize("absmax", [1.0, 1.1917498111724854, 3.7e-9, 8.99e5])
def test_codes_match_bitsandbytes_at_bin_edges(absmax):
    """The optimized codec divided by the absmax where bitsandbytes multiplies by its reciprocal, so a value
    within round-off of a bin edge took the neighbouring code; where the code was ALLoRA's ρ (stored, then read
    in the same step) a whole row's step moved by one code (1.7%; fixed fp64 lockstep 3.2e-5)."""
    x = bin_edge_values(absmax)
    x = torch.cat([x, x.new_zeros(-x.numel() % blockwise_8bit.BLOCKSIZE)])
    for exact_zero in (False, True):  # bitsandbytes' codes, and the corrected mode's
        expected, scale = blockwise_8bit.quantize(x, exact_zero=exact_zero)
        n_b = scale.repeat_interleave(blockwise_8bit.BLOCKSIZE)
        table = blockwise_8bit.code_lookup_table().to(torch.uint8)
        mine = codec.encode(x, n_b, table, codec.zero_code(exact_zero, x.device))
        assert torch.equal(mine.to(torch.uint8), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hina_spd_of_a_huge_parameter_is_finite(dtype):
    """Upstream's ADOPT (no floor) divides the step after an all-zero first gradient by √0 + ε; with ε = 1e-30
    a scalar θ goes to ~1e22, and SPD's ‖θ − θ0‖² overflowed float32 in the optimized class (NaN) where the
    reference's norm of it is finite."""
    final = {}
    for package in PACKAGES:
        theta = torch.nn.Parameter(torch.tensor(0.25, dtype=dtype))
        opt = build(package, "HinaAdamWOptimizer", [theta], compat="upstream", eps=1e-30, lr=1e-4, use_spd=True)
        for g in (0.0, 1e-2, 3e-3):
            theta.grad = torch.full_like(theta, g)
            opt.step()
        final[package] = theta.detach()
    assert abs(float(final[reference])) > 1e19  # the case this covers: θ² beyond float32
    assert torch.isfinite(final[optimized])
    bound = LOCKSTEP_FP32 if dtype == torch.float32 else LOCKSTEP_BF16
    assert scaled_error(final[reference], final[optimized]) <= bound.bound
