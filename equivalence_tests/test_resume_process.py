"""Resume across a fresh process (issue 7): N steps == k steps + save (weights_only) + load in a new Python
process + N − k steps, bit-identical, for every class of the family (both modes)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from .cases.family import make_params
from .cases.resume import CLASSES, STEPS, STOP, build, feed_steps


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
