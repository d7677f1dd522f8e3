"""The reference family's shared cases: the classes, their parameters, gradients and runs, resume across a save."""

import torch

import reference

from ..harness import roundtrip

FAMILY = [
    reference.Automagic_CameAMP8bit,
    reference.Automagic_CameAMP_COptim,
    reference.Automagic_CameAMP_COptim8bit,
    reference.Automagic_CameAMP_Improved,
    reference.Automagic_CameAMP_8Bit,
    reference.Automagic_CameAMP_Improved_8Bit,
    reference.HinaAdamWOptimizer,
]


SHAPES = [(24, 16), (16, 24), (300,), (2, 3, 3, 3)]


def make_params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def feed(params, step, loss_of=None):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def kwargs_for(cls, compat):
    if cls is reference.HinaAdamWOptimizer:
        return {"lr": 1e-2, "compat": compat, "wd_transition_steps": 5}
    return {"lr": 1e-3, "warmup_steps": 8, "weight_decay": 1e-2, "compat": compat}


def run(cls, compat, steps, params=None, opt=None, start=0):
    """Steps start..steps−1 (the C-Optim classes get a falling loss)."""
    params = params or make_params()
    opt = opt or cls(params, **kwargs_for(cls, compat))
    for i in range(start, steps):
        feed(params, i)
        opt.step(loss=1.0 / (i + 1)) if "COptim" in cls.__name__ else opt.step()
    return params, opt


def resume_runs(cls, compat, steps=12, stop=5):
    """(params after `steps` straight steps, params after `stop` steps + save (weights_only) + load into
    a new optimizer + the rest); the run crosses W/2 and W."""
    straight, _ = run(cls, compat, steps)
    params, opt = run(cls, compat, stop)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    new = cls(resumed, **kwargs_for(cls, compat))
    new.load_state_dict(roundtrip(opt.state_dict()))  # HinaAdamW's SPD anchors come from the checkpoint
    run(cls, compat, steps, resumed, new, start=stop)
    return straight, resumed
