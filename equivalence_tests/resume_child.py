"""The second half of the cross-process resume test: load the checkpoints written by
test_resume_process.py (weights_only=True) into fresh optimizers, take the remaining steps, save the
parameters. Usage: python -m equivalence_tests.resume_child DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .cases.resume import CLASSES, STEPS, STOP, build, feed_steps


def main(directory: str) -> None:
    for name in CLASSES:
        path = Path(directory) / f"{name}.pt"
        saved = torch.load(path, weights_only=True)
        params = [torch.nn.Parameter(p) for p in saved["params"]]
        opt = build(name, params, saved["compat"])
        opt.load_state_dict(saved["optimizer"])
        feed_steps(name, params, opt, STOP, STEPS)
        torch.save([p.detach() for p in params], Path(directory) / f"{name}.resumed.pt")


if __name__ == "__main__":
    main(sys.argv[1])
