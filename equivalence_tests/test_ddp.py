"""DDP (issue 26): every class of both packages, both modes, trained by 2 gloo ranks under
DistributedDataParallel with bucket views off and on and with gradient accumulation under `no_sync`, is bit
for bit the single-process run on the same global batch, and the ranks stay identical (ddp_child.py)."""

from __future__ import annotations

import subprocess
import sys

import torch

from .ddp_child import SETTINGS, STEPS
from .differential import CLASSES, COMPATS

WORLD = 2


def test_ddp_is_the_single_process_run_bit_for_bit(tmp_path):
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                    "-m", "equivalence_tests.ddp_child", str(tmp_path)], check=True, timeout=600)  # fmt: skip
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert len(results) == 2 * len(CLASSES) * len(COMPATS) * len(SETTINGS)
        apart = {case: errs for case, errs in results.items() if errs != [0.0, 0.0]}
        assert not apart, f"rank {rank}, after {STEPS} steps, [|Δθ| vs one process, vs rank 0]: {apart}"
