"""The papers' own algorithms (issue 3) against their oracles: the authors' packages (came-pytorch,
adabelief-pytorch), pytorch-optimizer >= 4.1 and torch, and bitsandbytes' blockwise quantiser (bit-exact)."""

import bitsandbytes.functional as bnb_functional
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import (
    adafactor,
    adamw,
    agr,
    allora,
    blockwise_8bit,
    came_style,
    dual_momentum,
    grams,
    spd,
    tam,
)  # fmt: skip
from reference.orthograd import OrthoGrad

from .cases.paper_oracles import (
    ORACLES,
    SHAPES,
    _adamw_kw,
    _allora_layer,
    _orthograd_wrap,
    allora_gradient_error,
    oracle_error,
    run_pair,
)
from .tolerances import ALLORA_GRADIENT_FP64, ORACLE_FP32, scaled_error


@pytest.mark.parametrize("case", ORACLES, ids=[c[0] for c in ORACLES])
def test_paper_optimizer_matches_its_oracle(case):
    _, ours_cls, ours_kw, theirs_cls, theirs_kw, keys = case
    assert oracle_error(ours_cls, ours_kw, theirs_cls, theirs_kw, keys) <= ORACLE_FP32.bound


def test_orthograd_wrapper_matches_pytorch_optimizer():
    kw = _adamw_kw()
    err = oracle_error(adamw.AdamW, kw, torch.optim.AdamW, {**kw, "foreach": False}, [], wrap=_orthograd_wrap)
    assert err <= ORACLE_FP32.bound


def test_oracle_runs_move_the_parameters():
    """The comparisons above are not between two optimizers that do nothing."""
    for _, ours_cls, ours_kw, theirs_cls, theirs_kw, _ in ORACLES:
        g = torch.Generator().manual_seed(0)
        start = [torch.randn(s, generator=g) for s in SHAPES]
        ours, _, _, _ = run_pair(ours_cls, ours_kw, theirs_cls, theirs_kw, steps=20)
        assert all(float((p.detach() - s).abs().max()) > 1e-3 for p, s in zip(ours, start, strict=True))


def test_tam_paper_convention_is_a_scalar_cosine_from_zero_momentum():
    p = torch.nn.Parameter(torch.ones(4))
    opt = tam.TAM([p], lr=0.1, momentum=0.5, decay_rate=0.5, eps=0.0)
    p.grad = torch.tensor([1.0, 1.0, -1.0, 1.0])
    opt.step()  # m_0 = 0: cos = 0, ŝ = 0, m = ½·g
    assert torch.allclose(opt.state[p]["momentum_buffer"], 0.5 * p.grad)
    opt.step()  # cos(m, g) = 1: ŝ = ½, m = ½·m + ¾·g
    state = opt.state[p]
    assert state["s"].dim() == 0 and float(state["s"]) == pytest.approx(0.5)
    assert torch.allclose(state["momentum_buffer"], p.grad)


def test_cautious_adamw_never_steps_against_the_gradient():
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(200, generator=g))
    plain = torch.nn.Parameter(p.detach().clone())
    opt, ref = adamw.AdamW([p], lr=1e-2, weight_decay=0.0, cautious=True), adamw.AdamW([plain], lr=1e-2, weight_decay=0)
    for step in range(30):
        grad = torch.randn(200, generator=g) if step % 2 else torch.ones(200)
        p.grad, plain.grad = grad.clone(), grad.clone()
        before, plain_before = p.detach().clone(), plain.detach().clone()
        opt.step()
        ref.step()
        assert ((p.detach() - before) * grad <= 0).all()
        if step == 0:  # every sign agrees at the first step: C-AdamW is AdamW
            assert torch.allclose(p.detach() - before, plain.detach() - plain_before, rtol=1e-5, atol=1e-9)


def test_dynamic_tree_code_is_bitsandbytes_map():
    assert torch.equal(blockwise_8bit.dynamic_tree_code(), bnb_functional.create_dynamic_map(signed=True))


@st.composite
def block_inputs(draw):
    n = draw(st.integers(1, 9000))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = torch.randn(n, generator=g) * draw(st.sampled_from([1e-12, 1e-4, 1.0, 1e5]))
    kind = draw(st.sampled_from(["plain", "outlier", "zeros", "constant", "strided"]))
    if kind == "outlier":
        x[draw(st.integers(0, n - 1))] *= 1e4
    elif kind == "zeros":
        x[: draw(st.integers(0, n))] = 0
    elif kind == "constant":
        x = torch.full((n,), draw(st.sampled_from([-3.0, 0.0, 2.5])))
    elif kind == "strided":
        x = torch.randn(n, 2, generator=g)[:, 0]
    return x


@settings(max_examples=60, deadline=None)
@given(x=block_inputs(), blocksize=st.sampled_from([64, 128, 256, 512, 1024, 2048, 4096]))
def test_readable_quantiser_is_bit_identical_to_bitsandbytes(x, blocksize):
    codes, absmax = blockwise_8bit.quantize_readable(x, blocksize)
    theirs, state = bnb_functional.quantize_blockwise(x.contiguous(), blocksize=blocksize)
    assert torch.equal(codes, theirs) and torch.equal(absmax, state.absmax)
    nearest, _ = blockwise_8bit.quantize_readable(x, blocksize, rule="nearest")
    code = blockwise_8bit.dynamic_tree_code()
    scale = absmax.repeat_interleave(blocksize)[: x.numel()]
    # the paper's nearest code is never worse than the table's
    exact = (x / scale).nan_to_num(nan=-1.0).clamp(-1, 1)
    assert ((code[nearest.long()] - exact).abs() <= (code[codes.long()] - exact).abs() + 1e-7).all()


@pytest.mark.parametrize(
    "build,name",
    [(lambda p: adamw.AdamW(p, lr=-1), "lr"), (lambda p: came_style.CAME(p, betas=(0.9, 1.0, 0.9)), "betas"),
     (lambda p: adafactor.Adafactor(p, beta2_decay=0.5), "beta2_decay"), (lambda p: tam.TAM(p, convention="x"),
     "convention"), (lambda p: grams.Grams(p, eps=-1.0), "eps"), (lambda p: OrthoGrad(p), "optimizer")],
)  # fmt: skip
def test_invalid_arguments_name_the_argument(build, name):
    with pytest.raises((ValueError, TypeError), match=name):
        build([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("cls", [adamw.AdamW, came_style.CAME, adafactor.Adafactor, grams.Grams, tam.TAM])
def test_sparse_gradients_are_refused(cls):
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        cls([p]).step()


def test_agr_per_tensor_formula():
    g = torch.tensor([[3.0, -1.0], [0.0, 4.0]])
    # α = |g|/Σ|g| = |g|/8:  Ψ(g) = g − α⊙g
    assert torch.allclose(agr.agr_per_tensor(g), torch.tensor([[3 - 9 / 8, -1 + 1 / 8], [0.0, 4 - 2.0]]))


def test_adam_spd_decays_only_when_selected():
    kw = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    # with λ = 1: a step is pulled back towards θ0 exactly when c_t < 0 and the Adam step grew ‖θ − θ0‖
    g = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(40, generator=g))
    decayed = spd.AdamSPD([p], weight_decay=1.0, **kw)
    p.grad = torch.randn(40, generator=g)
    decayed.step()
    fired = 0
    for _ in range(60):
        grad = torch.randn(40, generator=g)
        twin = torch.nn.Parameter(p.detach().clone())  # the same state, λ = 0: the plain Adam step θ̃
        plain = spd.AdamSPD([twin], weight_decay=0.0, **kw)
        plain.state[twin] = {k: v.clone() if torch.is_tensor(v) else v for k, v in decayed.state[p].items()}
        p.grad, twin.grad = grad.clone(), grad.clone()
        anchor, before = decayed.state[p]["anchor"], p.detach().clone()
        selected = float(spd.spd_condition(grad, before, anchor)) < 0
        decayed.step()
        plain.step()
        grew = float((twin.detach() - anchor).norm()) > float((before - anchor).norm())
        if selected and grew:
            fired += 1
            assert (p.detach() - anchor).norm() < (twin.detach() - anchor).norm()
        else:
            assert torch.equal(p.detach(), twin.detach())
    assert fired > 5


def test_adams_keeps_no_second_moment_and_its_first_step_is_a_scaled_sign():
    p = torch.nn.Parameter(torch.zeros(5))
    opt = dual_momentum.AdamS([p], lr=1.0, betas=(0.9, 0.95), eps=0.0)
    p.grad = torch.tensor([2.0, -0.5, 1e-3, -7.0, 3.0])
    opt.step()
    assert set(opt.state[p]) == {"step", "exp_avg"}
    # m_0 = 0: denominator √(0.05)·|g|, m_1 = 0.1·g  →  step = 0.1/√0.05 · sign(g)
    assert torch.allclose(p.detach(), -(0.1 / 0.05**0.5) * p.grad.sign())


@pytest.mark.parametrize("seed", range(5))
def test_allora_rescales_the_adapter_gradients_row_wise_and_leaves_the_input_gradient(seed):
    assert allora_gradient_error(seed) <= ALLORA_GRADIENT_FP64.bound


def test_allora_first_step_is_lora_with_scale_eta():
    """At B = 0 every row has ‖(BA)_i‖ = 0, so s = η: ∂L/∂B is that of LoRA's forward η·BAx."""
    layer, x, y = _allora_layer(0, eta=0.25, zero_b=True)
    ((layer(x) - y) ** 2).sum().backward()
    b = torch.zeros_like(layer.lora_b, requires_grad=True)
    ((layer.base(x.detach()) + 0.25 * (x.detach() @ layer.lora_a.detach().T @ b.T) - y) ** 2).sum().backward()
    assert scaled_error(layer.lora_b.grad, b.grad) <= ALLORA_GRADIENT_FP64.bound
    assert torch.count_nonzero(layer.lora_a.grad) == 0


def test_allora_scale_falls_as_a_row_grows():
    a, b = torch.eye(2), torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    # ‖(BA)_i‖ = 0, 1, 5 and 1/η² = 4: s = 1/2, 1/√5, 1/3
    assert torch.allclose(allora.output_row_scale(a, b, 0.5), torch.tensor([0.5, 5**-0.5, 1 / 3]))


@pytest.mark.parametrize(
    "kwargs, error",
    [(dict(base=torch.nn.Conv1d(2, 2, 1), rank=2, eta=1.0), TypeError), (dict(rank=0, eta=1.0), ValueError),
     (dict(rank=2, eta=0.0), ValueError)],
)  # fmt: skip
def test_allora_layer_rejects_bad_arguments(kwargs, error):
    kwargs = {"base": torch.nn.Linear(3, 3), **kwargs}
    name = "base" if error is TypeError else ("rank" if kwargs["rank"] == 0 else "eta")
    with pytest.raises(error, match=name):
        allora.ALLoRALinear(**kwargs)
