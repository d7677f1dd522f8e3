"""A learning-rate scheduler that moves lr and β1 at every step (torch's OneCycleLR and CyclicLR with their default
`cycle_momentum`) compiles no new graph in any fast class, and the fast classes follow the moved values as the
reference does. Before, Automagic_CameAMP_Improved and Improved_8Bit compiled two graphs per step (β1 and the
dual momentum's mix were constants of the stack step's graph): ~18 s per step for a 3-layer MLP on one core.

The classes run in a fresh process (`schedule_child`) with dynamo's "eager" backend: dynamo's guards decide the
recompiles, and the backend builds nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .differential import CLASSES, COMPATS
from .tolerances import FREE_RUNNING_8BIT_FP32, FREE_RUNNING_FP32, FREE_RUNNING_MINMAX_FP32

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = {  # the free-running bound of each class's fp32 parameters (tolerances.py)
    "Automagic_CameAMP8bit": FREE_RUNNING_8BIT_FP32,
    "Automagic_CameAMP_COptim8bit": FREE_RUNNING_8BIT_FP32,
    "Automagic_CameAMP_Improved_8Bit": FREE_RUNNING_8BIT_FP32,
    "Automagic_CameAMP_8Bit": FREE_RUNNING_MINMAX_FP32,
}


@pytest.fixture(scope="module")
def results() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAMEAMP_COMPILE": "1"}
    done = subprocess.run([sys.executable, "-m", "equivalence_tests.schedule_child"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
def test_a_moving_beta1_and_lr_compile_no_new_graph(results, name, compat):
    settled, after_moving, _ = results[f"{name} {compat}"]
    assert after_moving == settled, f"{after_moving - settled} graphs compiled while lr and β1 moved"


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
def test_the_moved_values_are_used_as_the_reference_uses_them(results, name, compat):
    *_, error = results[f"{name} {compat}"]
    assert error <= BOUNDS.get(name, FREE_RUNNING_FP32).bound
