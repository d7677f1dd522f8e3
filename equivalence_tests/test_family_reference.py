"""The rest of the family's reference classes: 8-bit, C-Optim, C-Optim 8-bit, HinaAdamW, the registry.

Upstream parity (bit-identical to hinablue/sd-scripts) is checked by tools/upstream_parity.py and
tools/upstream_hina_parity.py, which need the upstream files; these tests check the behaviour the spec
defines without them.
"""

import bitsandbytes.functional as bnb_functional
import pytest
import torch

import optimized
import reference
from reference import blockwise_8bit
from reference.contextual_lr import ContextualOptimizationModule
from reference.dynamic_weight_decay import weight_decay_multiplier
from reference.lora_names import classify

from .cases.family import FAMILY, feed, kwargs_for, make_params, resume_runs, run
from .harness import roundtrip


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_resume_is_bit_identical(cls, compat):
    straight, resumed = resume_runs(cls, compat)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
        assert torch.isfinite(a).all()


@pytest.mark.parametrize(
    "cls",
    [
        reference.Automagic_CameAMP8bit,
        optimized.Automagic_CameAMP8bit,
        reference.Automagic_CameAMP_COptim8bit,
        optimized.Automagic_CameAMP_COptim8bit,
    ],
    ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}",
)
def test_8bit_states_are_codes_with_absmax_and_no_fp32_copies(cls):
    params, opt = run(cls, "fixed", 3)
    sd = opt.state_dict()
    assert sd["magic8_version"] == 2 and sd["quant_blocksize"] == blockwise_8bit.BLOCKSIZE
    assert torch.equal(sd["quant_code"], bnb_functional.create_dynamic_map(signed=True))
    for p, state in zip(params, sd["state"].values(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_res", "lr_mask"):
            assert state[f"{key}_q"].dtype == torch.uint8 and state[f"{key}_q"].shape == p.shape
            assert state[f"{key}_q_scale"].numel() == -(-p.numel() // blockwise_8bit.BLOCKSIZE)
            assert key not in state
        if cls is reference.Automagic_CameAMP_COptim8bit:
            assert state["momentum_scale_1_q"].dtype == torch.uint8 and "momentum_scale_1" not in state


def test_blockwise_codec_matches_bitsandbytes():
    x = torch.randn(10000) * torch.logspace(-3, 2, 10000)
    codes, absmax = blockwise_8bit.quantize(x)
    ref_codes, quant_state = bnb_functional.quantize_blockwise(x, blocksize=blockwise_8bit.BLOCKSIZE)
    assert torch.equal(codes, ref_codes)
    expected = bnb_functional.dequantize_blockwise(ref_codes, quant_state)
    assert torch.equal(blockwise_8bit.dequantize(codes, absmax), expected)


def test_8bit_upstream_quirks_and_fixed_corrections():
    """Upstream: θ moves at t = 1 (V2), r is never re-quantised [I-08], an fp32 v stays in the live state
    but not in the state_dict [I-11b]. Fixed: r is stored."""
    for compat in ("upstream", "fixed"):
        params = make_params()
        before = [p.detach().clone() for p in params]
        opt = reference.Automagic_CameAMP8bit(params, lr=1e-3, compat=compat)
        feed(params, 0)
        opt.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
        state = opt.state[params[0]]
        r = blockwise_8bit.dequantize(state["exp_avg_res_q"], state["exp_avg_res_q_scale"])
        if compat == "upstream":
            assert torch.count_nonzero(r) == 0
            assert state["exp_avg_sq"].dtype == torch.float32
            assert "exp_avg_sq" not in opt.state_dict()["state"][0]
        else:
            assert torch.count_nonzero(r) > 0 and "exp_avg_sq" not in state


def test_8bit_post_warmup_mask_compounds_upstream_only():
    """[I-10]: with η below lr_max after warm-up, upstream stores M·max(η/lr_max, 0.1) every step."""
    means = {}
    for compat in ("upstream", "fixed"):
        params = make_params()
        opt = reference.Automagic_CameAMP8bit(params, lr=1e-3, warmup_steps=4, compat=compat)
        for i in range(10):
            opt.param_groups[0]["lr"] = 1e-3 if i < 4 else 5e-4
            feed(params, i)
            opt.step()
        state = opt.state[params[0]]
        means[compat] = float(blockwise_8bit.dequantize(state["lr_mask_q"], state["lr_mask_q_scale"]).mean())
    assert means["upstream"] < 0.05 * means["fixed"]  # 0.5^6 = 0.016 after six post-warm-up steps


def test_coptim_without_a_loss_is_a_constant_1_2():
    params, opt = run(reference.Automagic_CameAMP_COptim, "upstream", 0)
    for i in range(6):
        feed(params, i)
        opt.step()
    assert opt.c_optim.compute_contextual_lr_multiplier() == 1.2 and not opt.c_optim.detect_edge_case()
    assert all(opt.state[p]["contextual_lr_multiplier"] == 1.2 for p in params)


def test_coptim_learns_from_loss_argument_and_observe_loss():
    params = make_params()
    opt = reference.Automagic_CameAMP_COptim(params, lr=1e-3, compat="fixed")
    for i in range(12):
        feed(params, i)
        if i % 2:
            opt.step(loss=0.01 + (i % 3))  # a noisy loss: cv > 0.5 makes edge cases
        else:
            opt.observe_loss(0.01 + (i % 3))
            opt.step()
    assert len(opt.c_optim.loss_history) == 12
    assert opt.c_optim.detect_edge_case()
    assert all(opt.state[p]["edge_case_count"] > 0 for p in params)
    assert opt.state[params[0]]["contextual_lr_multiplier"] != 1.2


def stagnating(cache):
    module = ContextualOptimizationModule(preset="code_s1", seed=3, cache_multiplier=cache)
    for _ in range(30):  # a constant loss: stable_steps passes 15, the random stagnation branch
        module.update_context(torch.tensor(1.0), 0.5, 1e-3)
    return module


def test_stagnation_draws_from_the_module_generator_and_fixed_mode_caches():
    upstream, again = stagnating(False), stagnating(False)
    values = [upstream.compute_contextual_lr_multiplier() for _ in range(3)]
    assert len(set(values)) == 3 and all(1.6 <= v <= 2.0 for v in values)
    assert values == [again.compute_contextual_lr_multiplier() for _ in range(3)]  # seeded, not global
    cached = stagnating(True)
    assert len({cached.compute_contextual_lr_multiplier() for _ in range(3)}) == 1


def test_presets_differ_where_the_spec_says():
    losses = [1.0, 0.9, 0.8, 0.7]
    values = {}
    for preset in ("code_s1", "seed000_lora", "seed000_original"):
        module = ContextualOptimizationModule(preset=preset)
        for loss in losses:
            module.update_context(torch.tensor(1.0), loss, 1e-3)
        values[preset] = (module.compute_contextual_lr_multiplier(), module.preset.edge_factor)
    assert values["code_s1"] == (1.2, (0.4, 0.4)) and values["seed000_lora"] == (1.2, (0.7, 0.25))
    assert values["seed000_original"][0] == 1.0
    with pytest.raises(ValueError, match="preset"):
        ContextualOptimizationModule(preset="v9")


def test_coptim_state_dict_carries_the_context():
    _, opt = run(reference.Automagic_CameAMP_COptim, "fixed", 12)
    new = reference.Automagic_CameAMP_COptim(make_params(), **kwargs_for(reference.Automagic_CameAMP_COptim, "fixed"))
    new.load_state_dict(roundtrip(opt.state_dict()))
    assert list(new.c_optim.loss_history) == list(opt.c_optim.loss_history)
    assert list(new.c_optim.performance_history) == list(opt.c_optim.performance_history)
    assert new.c_optim.rng.getstate() == opt.c_optim.rng.getstate()


def test_coptim_momentum_scales_and_invalid_settings():
    opt = reference.Automagic_CameAMP_COptim(make_params(), momentum_scales=[1, 3])
    assert opt.momentum_scales == [1, 3]
    with pytest.raises(ValueError, match="momentum_scales"):
        reference.Automagic_CameAMP_COptim(make_params(), momentum_scales=[0])
    with pytest.raises(ValueError, match="preset"):
        reference.Automagic_CameAMP_COptim(make_params(), preset="nope")
    with pytest.raises(TypeError):
        reference.Automagic_CameAMP8bit(make_params(), momentum_scales=[1])


# ---------------------------------------------------------------------------------------- HinaAdamW
KOHYA = {
    "lora_unet_a.lora_down.weight": (4, 32), "lora_unet_a.lora_up.weight": (48, 4),
    "lora_unet_b.lora_up.weight": (16, 4), "lora_unet_c.lokr_w1": (4, 4), "lora_unet_c.lokr_w2": (8, 8),
    "lora_unet_a.alpha_bias": (48,),
}  # fmt: skip


def kohya_params():
    g = torch.Generator().manual_seed(0)
    return {n: torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for n, s in KOHYA.items()}


def test_lora_names_are_classified():
    assert classify("lora_te1_x.lora_down.weight") == "lora_a" and classify("m.lora_B.default.weight") == "lora_b"
    assert classify("x.lokr_w1") == "lokr_w1" and classify("x.lokr_t2") == "lokr_generic"
    assert classify("block.lora_attn_proj.weight") == "lora_a"  # [I-44] upstream misreads 'lora_a' inside a word
    assert classify("block.lora_attn_proj.weight", fixed=True) == "regular"


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_hina_lora_factors(compat):
    named = kohya_params()
    opt = reference.HinaAdamWOptimizer([{"params": list(named.values()), "named": list(named)}], compat=compat)
    a, b = named["lora_unet_a.lora_down.weight"], named["lora_unet_a.lora_up.weight"]
    assert [(x is a, y is b) for x, y in opt.layout.lora_pairs] == [(True, True)]
    r = float((b @ a).detach().norm(dim=1).mean())
    assert opt._lora_factor(a) == pytest.approx(1 / (1 + r), rel=1e-6)
    assert opt._lora_factor(named["lora_unet_b.lora_up.weight"]) == 16.0  # unpaired B
    assert opt._lora_factor(b) == (16.0 if compat == "fixed" else 1.0)  # a paired B [I-44]
    w1, w2 = named["lora_unet_c.lokr_w1"], named["lora_unet_c.lokr_w2"]
    lokr = 1 / (1 + float(w1.norm()) * float(w2.norm()) * 0.3)
    assert opt._lora_factor(w2) == pytest.approx(lokr * 16.0 * 0.6)
    info = opt.get_optimization_info()
    assert info["lora_stats"] == {"lora_a_params": 1, "lora_b_params": 2, "lora_pairs": 1}
    assert info["lokr_stats"]["lokr_pairs"] == 1
    assert opt.diagnose_lora_pairing()["unpaired_b"] == ["lora_unet_b.lora_up.weight"]


def test_hina_pairs_across_groups_only_when_fixed():
    """kohya's LoRA+ puts lora_down and lora_up in different groups: upstream pairs nothing there."""
    for compat, pairs in (("upstream", 0), ("fixed", 1)):
        named = kohya_params()
        groups = [
            {"params": [named["lora_unet_a.lora_down.weight"]], "named": ["lora_unet_a.lora_down.weight"]},
            {"params": [named["lora_unet_a.lora_up.weight"]], "named": ["lora_unet_a.lora_up.weight"], "lr": 1e-2},
        ]
        assert len(reference.HinaAdamWOptimizer(groups, compat=compat).layout.lora_pairs) == pairs


def test_hina_takes_peft_named_parameters():
    class Peft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layers = {"lora_A": torch.nn.Linear(32, 4, bias=False), "lora_B": torch.nn.Linear(4, 48, bias=False)}
            self.q = torch.nn.ModuleDict(layers)

    model = Peft()
    for compat in ("upstream", "fixed"):
        opt = reference.HinaAdamWOptimizer(model.named_parameters(), compat=compat)
        assert len(opt.layout.lora_pairs) == 1
        x = torch.randn(3, 32)
        model.q.lora_B(model.q.lora_A(x)).sum().backward()
        opt.step()
        opt.zero_grad()


def test_hina_dynamic_weight_decay_table():
    """T14 table: LoRA 0.837/0.700/0.586/0.490 (cap), LoKr 0.883/0.779/0.688; the 0.1 floor is unreachable."""
    lora = [weight_decay_multiplier("lora_a", t, 1000, 0.7, 0.1) for t in (1000, 1500, 2000, 2500, 3000, 9000)]
    lokr = [weight_decay_multiplier("lokr_w1", t, 1000, 0.7, 0.1) for t in (1500, 2000, 2500, 9000)]
    # the spec's table, to its three decimals
    assert lora == pytest.approx([1.0, 0.837, 0.700, 0.586, 0.490, 0.490], abs=5e-4)
    assert lokr == pytest.approx([0.883, 0.779, 0.688, 0.688], abs=5e-4)
    assert weight_decay_multiplier("regular", 9000, 1000, 0.7, 0.1) == 1.0


def test_hina_fixed_tam_factor_does_not_start_at_one_half():
    """[I-41]: upstream's A starts at 0, so (1 + A)/2 ≈ 1/2; bias correction gives ≈ (1 + cos)/2 at once."""
    factors = {}
    for compat in ("upstream", "fixed"):
        p = torch.nn.Parameter(torch.zeros(64))
        opt = reference.HinaAdamWOptimizer([p], compat=compat, use_spd=False, weight_decay=0.0)
        p.grad = torch.ones(64)
        opt.step()
        correction = 1 - 0.999 if compat == "fixed" else 1
        factors[compat] = 0.5 * (1 + float(opt.state[p]["momentum_alignment"]) / correction)
    assert factors["upstream"] == pytest.approx(0.5005, abs=1e-6) and factors["fixed"] == pytest.approx(1.0, abs=1e-5)


def test_hina_8bit_state():
    p = torch.nn.Parameter(torch.randn(8192))
    small = torch.nn.Parameter(torch.randn(10))
    opt = reference.HinaAdamWOptimizer([p, small], optim_bits=8)
    for i in range(3):
        feed([p, small], i)
        opt.step()
    assert opt.state[p]["exp_avg_q"].dtype == torch.uint8 and "exp_avg" not in opt.state[p]
    assert opt.state[small]["exp_avg"].dtype == torch.float32  # below min_8bit_size: 32-bit, as bitsandbytes


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"lr": -1.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"), ({"tam_beta": 2.0}, "tam_beta"),
     ({"wd_transition_steps": 0}, "wd_transition_steps"), ({"optim_bits": 4}, "optim_bits"),
     ({"compat": "x"}, "compat"), ({"alora_ratio": 0.0}, "alora_ratio")],
)  # fmt: skip
def test_hina_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        reference.HinaAdamWOptimizer(make_params(), **kwargs)


# ---------------------------------------------------------------------------------------- registry
def test_registry_builds_like_sd_scripts():
    params = make_params()
    opt = reference.create_optimizer(
        "library.automagic_cameamp.Automagic_CameAMP8bit", params, lr=2e-4,
        optimizer_args=["warmup_steps=20", "betas=(0.8,0.99,0.999)", "compat='fixed'"],
    )  # fmt: skip
    assert isinstance(opt, reference.Automagic_CameAMP8bit) and opt.compat == "fixed"
    assert opt.param_groups[0]["lr"] == 2e-4 and opt.param_groups[0]["warmup_steps"] == 20
    for name, cls in (("HinaAdamWOptimizer8bit", reference.HinaAdamWOptimizer), ("customadamw", reference.CustomAdamW),
                      ("Automagic_CameAMP_COptim8bit", reference.Automagic_CameAMP_COptim8bit)):  # fmt: skip
        assert reference.get_optimizer_class(name) is cls
    with pytest.raises(ValueError, match="unknown optimizer_type"):
        reference.get_optimizer_class("AdamW9")


def test_hina_cautious_mask_and_spd_penalty():
    from reference.cautious import cautious_mask_hina
    from reference.spd import spd_hina_penalty

    update, grad = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([1.0, 1.0, -1.0, 0.0])
    assert torch.equal(cautious_mask_hina(update, grad), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    grams = update.abs() * grad.sign()
    assert torch.equal(cautious_mask_hina(grams, grad), grams)  # a no-op after Grams [I-40]
    theta, anchor = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])
    assert torch.allclose(spd_hina_penalty(theta, anchor, 0.5), 0.5 * (3 / 5) * torch.tensor([3.0, 0.0]))
    assert torch.equal(spd_hina_penalty(torch.zeros(2), anchor, 0.5), 0 * (torch.zeros(2) - anchor))


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_hina_stale_denominator_on_a_fresh_lora(compat):
    """LoRA A's first gradient is exactly 0 while B = 0, so the stale v̄ is 0 at t = 2. Upstream divides by
    ε there (a step of ~10⁷·g); the corrected √max(v̄, v) keeps the step within Adam's bound."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 16, generator=g) / 4)
    b = torch.nn.Parameter(torch.zeros(16, 4))
    x = torch.randn(32, 16, generator=g)
    opt = reference.HinaAdamWOptimizer([("lora_down.weight", a), ("lora_up.weight", b)], lr=1e-3, compat=compat)
    start = a.detach().clone()
    for _ in range(2):
        loss = ((x @ a.t() @ b.t() - x) ** 2).mean()
        a.grad, b.grad = torch.autograd.grad(loss, [a, b])
        opt.step()
    moved = float((a.detach() - start).abs().max())
    if compat == "upstream":
        assert moved > 0.1  # observed 0.27 = 270·lr: the step divided by ε
    else:
        assert moved < 1e-2  # observed 5.5e-4: lr-sized
