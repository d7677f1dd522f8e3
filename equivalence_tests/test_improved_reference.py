"""Automagic_CameAMP_Improved and its techniques (spec O6, T15a, T20–T25).

Bit-identity with upstream (hinablue/sd-scripts @ 803cb56) is checked by tools/upstream_improved_parity.py,
which needs the upstream file; these tests check what the spec defines without it.
"""

import math

import pytest
import torch

import reference
from reference import edge_suppression, frequency_penalty, low_rank_penalty
from reference.dual_momentum import default_alpha, dual_momentum
from reference.tam import fast_correlation

Improved = reference.Automagic_CameAMP_Improved


def params_and_grads(seed=0, shapes=((24, 16), (40,), (2, 3, 3, 3))):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    return params, g


def feed(params, g):
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def test_laplacian_variants_and_threshold():
    x = torch.zeros(4, 5)
    x[1, 2] = 1.0
    lap = edge_suppression.laplacian(x)
    # 5-point stencil: −4 at the spike, +1 at its four neighbours; borders get only their in-range term
    assert lap[1, 2] == -4 and lap[2, 2] == 1 and lap[1, 1] == 1 and lap[1, 3] == 1
    assert lap[0, 2] == 0  # row 0 gets only the horizontal term, so it does not see the spike below it
    assert torch.equal(edge_suppression.edge_penalty(x, 2.0), lap.abs() * (lap.abs() > 2.0))
    conv = torch.zeros(2, 4, 5)
    conv[:, 1, 2] = 1.0
    assert not edge_suppression.laplacian(conv, "optimized").any()  # only 2-D in the S2 variant
    assert edge_suppression.laplacian(conv, "full")[0, 1, 2] == -4
    assert torch.equal(edge_suppression.edge_penalty(torch.ones(7)), torch.zeros(7))


def test_frequency_penalties_are_the_documented_biases():
    x = torch.randn(6, 8)
    r = frequency_penalty.finite_difference_penalty(x)
    assert (r >= 0).all() and r[0, 0] == 0  # a non-negative bias [I-35]
    assert torch.allclose(r[1, 1], (x[1, 1] - x[1, 0]).abs() + (x[1, 1] - x[0, 1]).abs())
    # no fftshift: the DC bin survives the "high-pass", so a constant input comes back as |c| everywhere
    p = frequency_penalty.fft_penalty(torch.full((6, 8), -0.5))
    assert torch.allclose(p, torch.full((6, 8), 0.5), atol=1e-6)


def test_dual_momentum_first_step_magnitude():
    """Spec T15a: at t = 1, u' = 20.8u / √(0.01·(20.8² + 20²)u²) ≈ 7.208·sign(u), and m := M = 20.8u."""
    u = torch.tensor([0.3, -2.0, 1e-3])
    zeros = torch.zeros(3)
    alpha = default_alpha(0.8, 0.99)
    x, mixed, long_term, mixed_sq = dual_momentum(u, zeros, zeros, 0.8, 0.99, 0.99, alpha, 1e-30)
    assert alpha == pytest.approx(20.0)
    assert torch.allclose(mixed, 20.8 * u) and torch.equal(long_term, u)
    assert torch.allclose(mixed_sq, 0.01 * (20.8**2 + 400) * u**2)
    assert torch.allclose(x, 20.8 / math.sqrt(0.01 * (20.8**2 + 400)) * u.sign(), rtol=1e-5)


def test_low_rank_penalties():
    theta = torch.randn(16, 24)
    assert torch.allclose(low_rank_penalty.exact_svd_penalty(theta, 0.01), 0.01 * theta, atol=1e-6)  # = kθ [I-35]
    assert not low_rank_penalty.approximate_penalty(torch.randn(8, 30), 0.01).any()  # rank ≤ 10: no tail
    assert low_rank_penalty.approximate_penalty(theta, 0.01).dtype == theta.dtype
    # bf16 has no CPU eigh/SVD (upstream raises); these compute in fp32
    assert low_rank_penalty.approximate_penalty(theta.bfloat16(), 0.01).dtype == torch.bfloat16
    # corrected: a descent step on the tail gradient shrinks Σ_{i>10} σ_i and leaves the top 10 directions
    grad = low_rank_penalty.tail_nuclear_gradient(theta, 1.0)
    s_before, s_after = torch.linalg.svdvals(theta), torch.linalg.svdvals(theta - 0.1 * grad)
    assert s_after[10:].sum() < s_before[10:].sum() - 0.5
    assert torch.allclose(s_after[:10], s_before[:10], atol=1e-4)
    assert low_rank_penalty.rank_aware_decay(1.0, theta) == pytest.approx(1 + math.exp(-0.1))  # T25 (S2)


def test_fast_correlation_switches_at_10000_elements():
    """[I-18]: per-column cosine below 10000 elements, one global cosine above."""
    m, x = torch.randn(50, 199), torch.randn(50, 199)
    small = fast_correlation(m, x)
    assert not torch.allclose(small[:, 0], small[:, 1])
    big_m, big_x = torch.randn(50, 200), torch.randn(50, 200)
    big = fast_correlation(big_m, big_x)
    cos = torch.nn.functional.cosine_similarity(big_m.reshape(1, -1), big_x.reshape(1, -1))
    assert torch.allclose(big, cos.expand_as(big))


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_gradients_are_not_modified(compat):
    """[I-03]: upstream mutates p.grad in place; the reference works on a copy in both modes."""
    params, g = params_and_grads()
    opt = Improved(params, lr=1e-3, warmup_steps=8, compat=compat)
    for _ in range(6):
        feed(params, g)
        before = [p.grad.clone() for p in params]
        opt.step()
        assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))


def test_tam_state_blows_up_upstream_and_stays_bounded_when_fixed():
    """[I-09]: upstream stores s·1.2 every step for 2-D params, so |s| grows ≈ ×1.1994 per step
    (×38 over 20 steps); fixed keeps s ∈ [−1, 1]."""
    for compat in ("upstream", "fixed"):
        params, g = params_and_grads(shapes=((24, 16),))
        opt = Improved(params, lr=1e-4, warmup_steps=200, compat=compat)
        sizes = []
        for t in range(1, 81):
            feed(params, g)
            opt.step()
            if t in (60, 80):
                sizes.append(float(opt.state[params[0]]["s"].abs().max()))
        assert torch.isfinite(params[0]).all()
        if compat == "upstream":
            assert sizes[1] / sizes[0] == pytest.approx(1.1994**20, rel=0.05)
        else:
            assert max(sizes) <= 1.0


def test_phase_split_for_odd_warmup():
    """[I-49]: with W = 21 upstream's TAM runs for t < ⌊21/2⌋ = 10; fixed for t < 10.5 (so also t = 10)."""
    for compat, tam_at_10 in (("upstream", False), ("fixed", True)):
        params, g = params_and_grads(shapes=((40,),))
        opt = Improved(params, lr=1e-4, warmup_steps=21, compat=compat)
        for _ in range(9):
            feed(params, g)
            opt.step()
        s9 = opt.state[params[0]]["s"].clone()
        feed(params, g)
        opt.step()
        assert (not torch.equal(opt.state[params[0]]["s"], s9)) == tam_at_10


def test_post_warmup_mask_compounds_upstream_only():
    """[I-10]: after W, upstream stores M·(η/η_max) every step; fixed scales by max(η/η_max, 0.1), unstored."""
    for compat in ("upstream", "fixed"):
        params, g = params_and_grads(shapes=((40,),))
        opt = Improved(params, lr=1e-3, warmup_steps=4, compat=compat)
        for _ in range(5):
            feed(params, g)
            opt.step()
        mask_at_w = opt.state[params[0]]["lr_mask"].clone()
        opt.param_groups[0]["lr"] = 5e-4
        for _ in range(3):
            feed(params, g)
            opt.step()
        stored = opt.state[params[0]]["lr_mask"]
        expected = mask_at_w * 0.5**3 if compat == "upstream" else mask_at_w
        assert torch.allclose(stored, expected)


def test_spd_anchor():
    """[I-29]: upstream re-anchors `pre` every step; fixed keeps θ0 (the first-step weights) until W."""
    for compat in ("upstream", "fixed"):
        params, g = params_and_grads(shapes=((24, 16),))
        theta0 = params[0].detach().clone()
        opt = Improved(params, lr=1e-3, warmup_steps=10, weight_decay=0.1, compat=compat)
        for _ in range(5):
            feed(params, g)
            opt.step()
        anchored = torch.equal(opt.state[params[0]]["pre"], theta0)
        assert anchored == (compat == "fixed")
        for _ in range(5):
            feed(params, g)
            opt.step()
        assert "pre" not in opt.state[params[0]] and "s" not in opt.state[params[0]]  # deleted at t == W


def test_dual_momentum_switch_and_state():
    params, g = params_and_grads()
    on, off = Improved(params, enable_dual_momentum=True), Improved(params, enable_dual_momentum=False)
    feed(params, g)
    on.step()
    assert {"long_term_momentum", "mixed_momentum_sq"} <= set(on.state[params[0]])
    off.step()
    assert "long_term_momentum" not in off.state[params[0]]
    assert on.param_groups[0]["long_term_beta"] == 0.99 and on.param_groups[0]["alpha_mix_ratio"] is None


def test_memory_stats_and_state_dict():
    params, g = params_and_grads()
    opt = Improved(params, lr=1e-3)
    feed(params, g)
    opt.step()
    stats = opt.get_memory_stats()
    assert {"cache_size", "max_cache_size", "buffer_pools", "total_buffers"} <= set(stats)
    measured = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    assert stats["state_bytes"] == measured > 0
    assert Improved(params, enable_cache=False).get_memory_stats()["cache_disabled"] is True
    assert opt.state_dict()["magic_version"] == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"long_term_beta": 1.0}, "long_term_beta"), ({"alpha_mix_ratio": -1.0}, "alpha_mix_ratio"),
     ({"edge_suppression": 1}, "edge_suppression"), ({"low_rank_emphasis": 0.0}, "low_rank_emphasis"),
     ({"betas": (0.9, 0.99)}, "betas"), ({"compat": "paper"}, "compat")],
)  # fmt: skip
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        Improved([torch.nn.Parameter(torch.zeros(3))], **kwargs)
    with pytest.raises(TypeError):
        Improved([torch.nn.Parameter(torch.zeros(3))], context_window=3)  # not an Improved kwarg


def test_bf16_parameters_run():
    """Upstream raises on bf16 2-D params (no bf16 eigh on CPU); the reference computes the penalty in fp32."""
    params, g = params_and_grads()
    params = [torch.nn.Parameter(p.detach().bfloat16()) for p in params]
    opt = Improved(params, lr=1e-3, warmup_steps=6)
    for _ in range(8):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).bfloat16()
        opt.step()
    assert all(torch.isfinite(p).all() and p.dtype == torch.bfloat16 for p in params)
