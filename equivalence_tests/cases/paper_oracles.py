"""Each paper's own algorithm against its oracle: the pairs, their kwargs and the error measure."""

import adabelief_pytorch
import came_pytorch
import pytorch_optimizer as po
import torch

from reference import (
    adabelief_residual,
    adafactor,
    adamw,
    adopt_stability,
    agr,
    allora,
    came_style,
    grams,
    spd,
    tam,
)  # fmt: skip
from reference.orthograd import OrthoGrad

from ..tolerances import scaled_error

SHAPES = [(33,), (16, 24), (2, 3, 4, 5)]


STEPS = 120


def _adamw_kw():
    return dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)


class _AdamWOnAGR(torch.optim.AdamW):
    """torch's AdamW fed the paper's AGR gradient: the composition AdamW_AGR is."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = agr.agr_per_tensor(p.grad)
        return super().step(closure)


def _came_kw():
    return dict(lr=1e-3, betas=(0.8, 0.99, 0.999), eps=(1e-30, 1e-16), clip_threshold=0.7, weight_decay=0.02)


# (name, our class and kwargs, the oracle and its kwargs, state key pairs (ours, theirs))
ORACLES = [
    ("AdamW", adamw.AdamW, _adamw_kw(), torch.optim.AdamW, {**_adamw_kw(), "foreach": False},
     [("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")]),
    ("Adafactor", adafactor.Adafactor,
     dict(lr=5e-3, eps=(1e-30, 1e-3), clip_threshold=1.5, beta2_decay=-0.7, weight_decay=0.05),
     torch.optim.Adafactor, dict(lr=5e-3, eps=(1e-30, 1e-3), d=1.5, beta2_decay=-0.7, weight_decay=0.05, foreach=False),
     []),
    ("CAME", came_style.CAME, _came_kw(), came_pytorch.CAME, _came_kw(),
     [("exp_avg", "exp_avg"), ("exp_avg_res_row", "exp_avg_res_row"), ("exp_avg_sq_col", "exp_avg_sq_col")]),
    ("AdaBelief", adabelief_residual.AdaBelief, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-12, weight_decay=0.05),
     adabelief_pytorch.AdaBelief, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-12, weight_decay=0.05, weight_decouple=True,
                             rectify=False, amsgrad=False, fixed_decay=False, print_change_log=False),
     [("exp_avg", "exp_avg"), ("exp_avg_var", "exp_avg_var")]),
    ("ADOPT", adopt_stability.ADOPT, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05),
     po.ADOPT, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05, weight_decouple=True, foreach=False),
     [("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")]),
    ("ADOPT cautious", adopt_stability.ADOPT, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-5, cautious=True),
     po.ADOPT, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-5, cautious=True, foreach=False),
     [("exp_avg", "exp_avg")]),
    ("Grams", grams.Grams, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05),
     po.Grams, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05, weight_decouple=True, foreach=False),
     [("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")]),
    ("TAM (pytorch_optimizer convention)", tam.TAM,
     dict(lr=2e-3, momentum=0.8, decay_rate=0.7, eps=1e-6, weight_decay=0.05, convention="pytorch_optimizer"),
     po.TAM, dict(lr=2e-3, momentum=0.8, decay_rate=0.7, eps=1e-6, weight_decay=0.05, weight_decouple=True,
                 foreach=False),
     [("s", "s"), ("momentum_buffer", "momentum_buffer")]),
    ("AdamW_AGR (AGR gradient)", agr.AdamWAGR, _adamw_kw(), _AdamWOnAGR, {**_adamw_kw(), "foreach": False},
     [("exp_avg", "exp_avg")]),
    ("Adam-SPD, λ = 0", spd.AdamSPD, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0),
     torch.optim.Adam, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, foreach=False), [("exp_avg", "exp_avg")]),
]  # fmt: skip


def run_pair(ours_cls, ours_kw, theirs_cls, theirs_kw, wrap=None, steps=STEPS):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    ours = [torch.nn.Parameter(x.clone()) for x in init]
    theirs = [torch.nn.Parameter(x.clone()) for x in init]
    opt_ours, opt_theirs = ours_cls(ours, **ours_kw), theirs_cls(theirs, **theirs_kw)
    if wrap is not None:
        opt_ours, opt_theirs = wrap(opt_ours, opt_theirs)
    for _ in range(steps):
        for a, b in zip(ours, theirs, strict=True):
            grad = torch.randn(a.shape, generator=g) + 0.3 * a.detach()  # noise plus a pull towards 0
            a.grad, b.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    return ours, theirs, opt_ours, opt_theirs


def oracle_error(ours_cls, ours_kw, theirs_cls, theirs_kw, keys, wrap=None):
    """Worst scaled error over the parameters and the named states, and how far the parameters moved."""
    ours, theirs, opt_ours, opt_theirs = run_pair(ours_cls, ours_kw, theirs_cls, theirs_kw, wrap)
    errors = [scaled_error(b, a) for a, b in zip(ours, theirs, strict=True)]
    for a, b in zip(ours, theirs, strict=True):
        for ours_key, theirs_key in keys:
            if theirs_key in opt_theirs.state[b]:
                errors.append(scaled_error(opt_theirs.state[b][theirs_key], opt_ours.state[a][ours_key]))
    return max(errors)


def _orthograd_wrap(ours, theirs):
    return OrthoGrad(ours), po.OrthoGrad(theirs)


def _allora_layer(seed: int, eta: float, zero_b: bool):
    torch.manual_seed(seed)
    layer = allora.ALLoRALinear(torch.nn.Linear(12, 9, dtype=torch.float64), rank=3, eta=eta)
    if not zero_b:
        with torch.no_grad():
            layer.lora_b.normal_()
    x = torch.randn(4, 5, 12, dtype=torch.float64, requires_grad=True)  # two batch dimensions
    return layer, x, torch.randn(4, 5, 9, dtype=torch.float64)


def allora_gradient_error(seed: int) -> float:
    """ALLoRA (no oracle exists): the worst scaled error of ∂L/∂A, ∂L/∂B against the products of
    diag(s)·∂L/∂(BA) with the other factor, s_i = 1/√(‖(BA)_i,:‖ + 1/η²), and of ∂L/∂x against plain LoRA's."""
    layer, x, y = _allora_layer(seed, eta=0.5, zero_b=False)
    ((layer(x) - y) ** 2).sum().backward()
    a, b = layer.lora_a.detach(), layer.lora_b.detach()
    product = (b @ a).requires_grad_()  # the same layer with BA as one leaf
    x_plain = x.detach().clone().requires_grad_()
    ((layer.base(x_plain) + x_plain @ product.T - y) ** 2).sum().backward()
    scaled = allora.output_row_scale(a, b, 0.5)[:, None] * product.grad
    assert not torch.allclose(scaled, product.grad)  # the scale is not 1 here
    pairs = [(layer.lora_a.grad, b.T @ scaled), (layer.lora_b.grad, scaled @ a.T), (x.grad, x_plain.grad)]
    return max(scaled_error(ours, expected) for ours, expected in pairs)
