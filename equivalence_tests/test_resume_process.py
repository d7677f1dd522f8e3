"""Resume across a fresh process (issue 7): N steps == k steps + save (weights_only) + load in a new Python
process + N − k steps, bit-identical, for every class of the family (both modes)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import optimized
import reference

from .test_family_reference import feed, make_params

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


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, compat):
    straight = {}
    for name in CLASSES:
        params = make_params()
        opt = build(name, params, compat)
        feed_steps(name, params, opt, 0, STEPS)
        straight[name] = [p.detach().clone() for p in params]
        params = make_params()
        opt = build(name, params, compat)
        feed_steps(name, params, opt, 0, STOP)
        torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict(), "compat": compat},
                   tmp_path / f"{name}.pt")  # fmt: skip
    subprocess.run([sys.executable, "-m", "equivalence_tests.resume_child", str(tmp_path)], check=True)
    for name in CLASSES:
        resumed = torch.load(tmp_path / f"{name}.resumed.pt", weights_only=True)
        for a, b in zip(straight[name], resumed, strict=True):
            assert torch.equal(a, b), name
