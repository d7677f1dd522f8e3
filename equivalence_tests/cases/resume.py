"""Resume cases: every class, the gradients it is fed, where a run stops and resumes."""

from __future__ import annotations

import optimized
import reference

from .family import feed

STEPS, STOP = 12, 5  # crosses W/2 = 4 and W = 8


CLASSES = {
    "Automagic_CameAMP": reference.Automagic_CameAMP,
    "optimized.Automagic_CameAMP": optimized.Automagic_CameAMP,
    "Automagic_CameAMP8bit": reference.Automagic_CameAMP8bit,
    "optimized.Automagic_CameAMP8bit": optimized.Automagic_CameAMP8bit,
    "Automagic_CameAMP_COptim": reference.Automagic_CameAMP_COptim,
    "Automagic_CameAMP_COptim8bit": reference.Automagic_CameAMP_COptim8bit,
    "optimized.Automagic_CameAMP_COptim": optimized.Automagic_CameAMP_COptim,
    "optimized.Automagic_CameAMP_COptim8bit": optimized.Automagic_CameAMP_COptim8bit,
    "Automagic_CameAMP_Improved": reference.Automagic_CameAMP_Improved,
    "optimized.Automagic_CameAMP_Improved": optimized.Automagic_CameAMP_Improved,
    "Automagic_CameAMP_Improved_8Bit": reference.Automagic_CameAMP_Improved_8Bit,
    "optimized.Automagic_CameAMP_Improved_8Bit": optimized.Automagic_CameAMP_Improved_8Bit,
    "Automagic_CameAMP_8Bit": reference.Automagic_CameAMP_8Bit,
    "optimized.Automagic_CameAMP_8Bit": optimized.Automagic_CameAMP_8Bit,
    "HinaAdamWOptimizer": reference.HinaAdamWOptimizer,
    "optimized.HinaAdamWOptimizer": optimized.HinaAdamWOptimizer,
}


def build(name, params, compat, **kwargs):
    cls = CLASSES[name]
    if issubclass(cls, reference.HinaAdamWOptimizer):
        return cls(params, lr=1e-2, compat=compat, wd_transition_steps=5, **kwargs)
    if issubclass(cls, reference.Automagic_CameAMP_Improved_8Bit):
        kwargs = {"force_8bit": True, **kwargs}
    return cls(params, lr=1e-3, warmup_steps=8, weight_decay=1e-2, compat=compat, **kwargs)


def feed_steps(name, params, opt, start, stop):
    for i in range(start, stop):
        feed(params, i)
        opt.step(loss=1.0 / (i + 1)) if "COptim" in name else opt.step()
