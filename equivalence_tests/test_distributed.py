"""torch.distributed (issue 26), 2 gloo ranks on the CPU started by torchrun (distributed_child.py).

* DDP: every class of both packages, both modes, with bucket views off and on and with gradient accumulation
  under `no_sync`, is bit for bit the single-process run on the same global batch; the ranks stay identical.
* FSDP2 (`fully_shard`, DTensor parameters, one of them sharded unevenly): every class of both packages steps
  whole tensors (reference.sharding) and is bit for bit the single-process run, gradient accumulation without
  sync included (HinaAdamW with named parameters, so its LoRA pair and SPD anchors are exercised), and so is a
  resume through torch.distributed.checkpoint's full state dicts (saved at step 3 of 10, weights_only) on 2
  ranks and in one process without torch.distributed.
* The fast Automagic_CameAMP and C-Optim step their own shards instead (`steps_local_shards`): their state is
  held per shard, their sums are all-reduced, and they are the single-process run within the free-running bound;
  their resumes through DCP are bit for bit the FSDP2 run that was not interrupted. So are their 8-bit classes for
  a tensor whose 8-bit blocks each lie within one rank's rows (their models' wide weight, whose ALLoRA ρ block the
  ranks share), and step the others whole; and HinaAdamW, but for its LoRA pair (its factor reads the pair), with
  32-bit states and with 8-bit ones (run as a class of its own: distributed_child.VARIANTS).
* C-Optim given each rank's loss learns their mean, under DDP and FSDP2.
* An FSDP2 step's collectives do not grow with the number of tensors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import optimized

from .differential import COMPATS
from .distributed_child import (
    BLOCKED,
    BLOCKS_FIT,
    BY_NAME,
    CONTEXTUAL,
    DDP_SETTINGS,
    FSDP_MICRO,
    KEEPS_AVG_LR,
    LORA_PAIR,
    RUN,
    STEPS,
    steps_shards,
)

WORLD = 2


def launch(tmp_path_factory, world: int) -> list[dict]:
    """The child on `world` ranks. It runs before the per-test `compile_mode` fixture, so the ranks are told here
    to run the fast path eagerly (compiled only under CAMEAMP_TEST_COMPILE=1), as the tests do."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "CAMEAMP_COMPILE": "1" if os.environ.get("CAMEAMP_TEST_COMPILE") == "1" else "0"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                          "-m", "equivalence_tests.distributed_child", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, f"torchrun exited {run.returncode}:\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """One launch on 2 ranks for the module: every case of distributed_child.main."""
    return launch(tmp_path_factory, WORLD)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> list[dict]:
    """One launch on 3 ranks: distributed_child.three_ranks."""
    return launch(tmp_path_factory, 3)


SHARDED = tuple(f"optimized.{name} " for name in RUN if steps_shards(optimized, name))


def assert_bit_identical(results: dict, count: int, rank: int, shards_against_one_process: bool = False) -> None:
    """Every case bit for bit. Where FSDP2 runs are compared with one process (`shards_against_one_process`), a
    class that steps its own shards (three figures per case) is within the free-running bound its case records
    (distributed_child.limit_of): its per-rank sums are added in another order than one process adds them."""
    assert len(results) == count
    sharded = {case: errs for case, errs in results.items() if len(errs) == 3}
    expected = {case for case in results if case.startswith(SHARDED)} if shards_against_one_process else set()
    assert set(sharded) == expected
    apart = {case: errs for case, errs in results.items() if case not in sharded and errs != [0.0, 0.0]}
    assert not apart, f"rank {rank}, after {STEPS} steps, [|Δθ| vs one process, vs rank 0]: {apart}"
    apart = {case: errs for case, errs in sharded.items() if errs[1] != 0.0 or not errs[0] <= errs[2]}
    assert not apart, f"rank {rank}, after {STEPS} steps, [scaled error vs one process, |Δθ| vs rank 0, bound]: {apart}"


def test_ddp_is_the_single_process_run_bit_for_bit(ranks):
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["ddp"], 2 * len(RUN) * len(COMPATS) * len(DDP_SETTINGS), rank)


def test_fsdp2_is_the_single_process_run_bit_for_bit(ranks):
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["fsdp"], 2 * len(RUN) * len(COMPATS) * len(FSDP_MICRO), rank, True)


def test_c_optim_given_the_loss_is_the_single_process_run_bit_for_bit(ranks):
    """C-Optim given each rank's loss (`step(loss=...)`) under DDP and FSDP2 is the single-process run given the
    mean of the ranks' losses: the context learns the mean on every rank, so the ranks' Λ and steps stay one."""
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["ddp_with_loss"], 2 * len(CONTEXTUAL) * len(COMPATS), rank)
        assert_bit_identical(results["fsdp_with_loss"], 2 * len(CONTEXTUAL) * len(COMPATS), rank, True)


def test_fsdp2_shards_step_the_early_phase_as_one_process(ranks):
    """The class that steps its own shards, with a warm-up window whose early phase has steps after t = 1: TAM's
    sums (and upstream's column norms) and OrthoGrad's two sums, all-reduced (on LoraNet without its one-element
    gain, whose upstream OrthoGrad turns rounding into a full step: see distributed_child.LoraNet)."""
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["fsdp_early"], len(SHARDED) * len(COMPATS), rank, True)


@pytest.mark.parametrize(("kind", "routes"), [("resumed", 2), ("to_one_process", 1)])
def test_fsdp2_resume_through_dcp_state_dicts_is_bit_identical(ranks, kind, routes):
    """Resumed into a fresh FSDP2 optimizer, through the full state dicts (loaded with full_state_dict=True) and
    through dcp.save/dcp.load; and the full checkpoint in one process without torch.distributed."""
    for rank, results in enumerate(ranks):
        assert_bit_identical(results[kind], routes * 2 * len(RUN) * len(COMPATS), rank, kind == "to_one_process")


# The collectives of a class that steps its own shards, in its busiest step (corrected mode), with the all_gather of
# the tensors it steps whole (the models' one-element gain has an empty shard): the Automagic classes at t < W/2 make
# five all-reduces (the gradient sums, the scaled gradient's sums, OrthoGrad's two: its projection, then the norm
# of U⊥; the LR mask's mean); their 8-bit classes' ALLoRA ρ of a shard shares a block with the other rank, so two
# all-reduces (MAX) of its scales at a tensor's first step (at its start, and refreshed by the step); HinaAdamW
# with OrthoGrad makes five (the gradient sums, the floored gradient's, the projected gradient's, TAM's, SPD's).
SHARDED_COLLECTIVES = {
    "Automagic_CameAMP": 6,
    "Automagic_CameAMP_COptim": 6,
    "Automagic_CameAMP8bit": 8,
    "Automagic_CameAMP_COptim8bit": 8,
    "HinaAdamWOptimizer": 6,
    "HinaAdamWOptimizer8bit": 6,
}


def test_a_one_process_checkpoint_resumes_on_fsdp2_ranks(ranks):
    """The 1 → 2 resume: one process's `state_dict()` loaded by `load_state_dict` into fresh FSDP2 optimizers (whole
    tensors, cut to each rank's rows where the class steps its own shards) continues the one-process run: bit for
    bit, or within the free-running bound where the class steps shards."""
    for rank, results in enumerate(ranks):
        assert_bit_identical(results["from_one_process"], 2 * len(RUN) * len(COMPATS), rank, True)


def test_fsdp2_step_collectives_do_not_grow_with_the_tensor_count(ranks):
    """An optimizer step under FSDP2 gathers every parameter and gradient it needs whole in one all_gather per
    mesh and dtype (reference.sharding.gather_whole; it made two per tensor), so the model with 19 tensors costs
    what the one with 7 does: one collective (one mesh, float32), in every phase, every class of both packages.
    A class that steps its own shards gathers nothing and all-reduces each kind of sum once for all tensors."""
    for results in ranks:
        counts = results["collectives"]
        assert len(counts) == 2 * len(RUN)
        sharded = {case: SHARDED_COLLECTIVES.get(case.split(".")[-1]) for case in counts}
        expected = {case: [sharded[case]] * 2 if f"{case} ".startswith(SHARDED) else [1, 1] for case in counts}
        assert counts == expected


def fits(name: str, param: str) -> bool:
    """Whether class `name`, where it steps its own shards, steps parameter `param` of its test model so."""
    if name in BLOCKED:
        return param in BLOCKS_FIT
    return name not in BY_NAME or param not in LORA_PAIR


def test_fsdp2_state_is_held_per_shard_where_the_class_steps_shards(ranks):
    """The fast Automagic_CameAMP, C-Optim, their 8-bit classes and HinaAdamW hold each state as this rank's rows
    (and `state_dict()` gives DTensors sharded like θ); the 8-bit ones only for a tensor whose 8-bit blocks lie
    within one rank's rows (BLOCKS_FIT), HinaAdamW not for its LoRA pair (whose factor reads the pair). Every other
    class holds it whole on every rank (reference.sharding), as the README says."""
    for results in ranks:
        for case, layouts in results["state_layout"].items():
            shards, name = f"{case} ".startswith(SHARDED), case.split(".")[-1]
            assert layouts == {param: "shards" if shards and fits(name, param) else "whole"
                               for param in layouts}, case  # fmt: skip
            assert not shards or any(fits(name, param) for param in layouts), case


def test_fsdp2_state_bytes_count_this_ranks_rows(ranks):
    """`state_bytes()` of a class that steps its own shards, taken outside a step under FSDP2 (when the groups hold
    the DTensors), counts this rank's state: less than one process holds."""
    for results in ranks:
        held = results["state_bytes"]
        assert set(held) == {f"optimized.{name}" for name in RUN if steps_shards(optimized, name)}
        assert all(0 < fsdp < one for fsdp, one in held.values()), held


def test_fsdp2_a_shared_rho_block_has_one_scale_on_every_rank(ranks):
    """The 8-bit classes' ALLoRA ρ blocks two ranks share (the wide weight's one block of 2048 rows) hold one scale,
    the same on every rank that holds rows of them, as one process quantises the block (ShardSums.block_max)."""
    for results in ranks:
        blocks = results["rho_scales"]
        assert set(blocks) == {f"optimized.{name}" for name in BLOCKED if name not in BY_NAME}
        for case, scales in blocks.items():
            assert any(len(values) > 1 for _, values in scales), case  # a block is shared
            assert all(len(set(values)) == 1 for _, values in scales), (case, scales)


def test_three_fsdp2_ranks_step_their_shards_as_one_process(three):
    """On 3 ranks (uneven shards; 8-bit block scales cut 3 ways; a ρ block shared by 3), every fast class that steps
    its own shards is, within the free-running bound, the run of the same ranks stepping whole tensors (one
    process's step on the same gradients; distributed_child.three_ranks), resumes through DCP bit for bit, and holds
    the same tensors per shard as on 2."""
    shards = [name for name in RUN if steps_shards(optimized, name)]
    for rank, results in enumerate(three):
        assert_bit_identical(results["fsdp"], len(shards) * len(COMPATS), rank, True)
        assert_bit_identical(results["resumed"], len(shards) * len(COMPATS), rank)
        for case, layouts in results["state_layout"].items():
            name = case.split(".")[-1]
            assert layouts == {param: "shards" if fits(name, param) else "whole" for param in layouts}, case


# The LR mask's mean of a class that steps its own shards, against the float64 mean of its whole mask:
# kernels.tensor_sum adds each row of up to 256 elements in float32 before the float64 sums (and the all-reduce),
# and a row sum of n positive terms is within (n − 1)·2^-24 of its exact value. Observed 1.2e-7 (one float32 ulp)
# against one process's mean after 3 steps; a missing rank's rows or a wrong count would be a factor of 2.
AVG_LR_SHARDED = 255 * 2**-24


def test_fsdp2_avg_lr_is_the_one_process_mean(ranks):
    """The saved avg_lr (the LR mask's mean) under FSDP2: bit for bit one process's where the class steps whole
    tensors, within AVG_LR_SHARDED of its whole mask's mean where it steps its own shards (the mean's sums
    all-reduced), or of one process's for the 8-bit ones (distributed_child.avg_lr_error)."""
    for results in ranks:
        errors = results["avg_lr"]
        assert len(errors) == 2 * len(KEEPS_AVG_LR)
        apart = {case: e for case, e in errors.items()
                 if e > (AVG_LR_SHARDED if f"{case} ".startswith(SHARDED) else 0.0)}  # fmt: skip
        assert not apart, apart
