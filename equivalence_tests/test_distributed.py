"""torch.distributed (issue 26), 2 gloo ranks on the CPU started by torchrun (distributed_child.py).

* DDP: every class of both packages, both modes, with bucket views off and on and with gradient accumulation
  under `no_sync`, is bit for bit the single-process run on the same global batch; the ranks stay identical.
* FSDP2 (`fully_shard`, DTensor parameters, one of them sharded unevenly): every class of both packages steps
  whole tensors (reference.sharding) and is bit for bit the single-process run, gradient accumulation without
  sync included (HinaAdamW with named parameters, so its LoRA pair and SPD anchors are exercised), and so is a
  resume through torch.distributed.checkpoint's full state dicts (saved at step 3 of 10, weights_only) on 2
  ranks and in one process without torch.distributed.
* An FSDP2 step's collectives do not grow with the number of tensors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from .differential import CLASSES, COMPATS
from .distributed_child import DDP_SETTINGS, FSDP_MICRO, STEPS

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """One launch for the module. It runs before the per-test `compile_mode` fixture, so the ranks are told
    here to run the fast path eagerly (compiled only under CAMEAMP_TEST_COMPILE=1), as the tests do."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "CAMEAMP_COMPILE": "1" if os.environ.get("CAMEAMP_TEST_COMPILE") == "1" else "0"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                          "-m", "equivalence_tests.distributed_child", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, f"torchrun exited {run.returncode}:\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def assert_bit_identical(results: dict, count: int, rank: int) -> None:
    assert len(results) == count
    apart = {case: errs for case, errs in results.items() if errs != [0.0, 0.0]}
    assert not apart, f"rank {rank}, after {STEPS} steps, [|Δθ| vs one process, vs rank 0]: {apart}"


def test_ddp_is_the_single_process_run_bit_for_bit(ranks):
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["ddp"], 2 * len(CLASSES) * len(COMPATS) * len(DDP_SETTINGS), rank)


def test_fsdp2_is_the_single_process_run_bit_for_bit(ranks):
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["fsdp"], 2 * len(CLASSES) * len(COMPATS) * len(FSDP_MICRO), rank)


@pytest.mark.parametrize(("kind", "routes"), [("resumed", 2), ("to_one_process", 1)])
def test_fsdp2_resume_through_dcp_state_dicts_is_bit_identical(ranks, kind, routes):
    """Resumed into a fresh FSDP2 optimizer, through the full state dicts (loaded with full_state_dict=True) and
    through dcp.save/dcp.load; and the full checkpoint in one process without torch.distributed."""
    for rank, results in enumerate(ranks):
        assert_bit_identical(results[kind], routes * 2 * len(CLASSES) * len(COMPATS), rank)


def test_fsdp2_step_collectives_do_not_grow_with_the_tensor_count(ranks):
    """An optimizer step under FSDP2 gathers every parameter and gradient it needs whole in one all_gather per
    mesh and dtype (reference.sharding.gather_whole; it made two per tensor), so the model with 18 tensors costs
    what the one with 6 does: one collective (one mesh, float32), in every phase, every class of both packages."""
    for results in ranks:
        counts = results["collectives"]
        assert len(counts) == 2 * len(CLASSES)
        assert {case: c for case, c in counts.items() if c != [1, 1]} == {}
