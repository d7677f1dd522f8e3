"""The fused step compiles a bounded number of graphs, independent of how many tensors there are."""

import pytest
import torch
from torch._dynamo.utils import counters

import optimized

pytestmark = pytest.mark.compiled


def _train(n_tensors, steps=10, warmup=6):
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 48), (48, 16), (7,)] * (n_tensors // 3)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = optimized.Automagic_CameAMP(params, lr=1e-4, warmup_steps=warmup)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_graph_count_does_not_grow_with_tensor_count():
    torch._dynamo.reset()
    counters.clear()
    _train(6)  # every phase: seed, early, late warm-up, post warm-up
    few = counters["stats"]["unique_graphs"]
    _train(300)  # 50× the tensors: each graph seen is recompiled at most once, with dynamic shapes
    many = counters["stats"]["unique_graphs"] - few
    assert few <= 16, few
    assert many <= few, many
    _train(30)  # another size: no further compile at all
    assert counters["stats"]["unique_graphs"] - few - many == 0


def _train_improved(n_tensors, steps=9):
    """The compiled Improved test's settings (its 2-D graphs come from the inductor cache), every phase."""
    from .test_improved_equivalence import CASES

    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 24), (24, 16)] * (n_tensors // 2)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = optimized.Automagic_CameAMP_Improved(params, compat="upstream", **CASES["defaults, W 8"])
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_improved_graph_count_does_not_grow_with_tensor_count():
    """Improved compiles one graph per (phase, ndim) with every dimension symbolic from the start (stacks
    of one tensor and stacks over 4,096 elements per tensor aside): two shapes of matrix share them, and
    200 tensors per shape compile at most one graph more than 2 per shape (the group sum Σ|g| of a stack
    crosses 4,096 elements, where inductor switches to a cascade sum), and 150 per shape nothing more.
    Counted as increments, without resetting dynamo, so the compiled Improved test reuses the 2-D graphs."""
    start = counters["stats"]["unique_graphs"]
    _train_improved(4)  # early (t < W/2), warm-up, post warm-up
    few = counters["stats"]["unique_graphs"]
    _train_improved(400)
    many = counters["stats"]["unique_graphs"]
    _train_improved(300)
    assert few - start <= 5, few - start
    assert many - few <= 1, many - few
    assert counters["stats"]["unique_graphs"] == many


def _train_seed004(n_tensors, steps=9):
    """The compiled seed-004 test's settings (its graphs come from the inductor cache), every phase."""
    from .test_seed004_equivalence import CASES

    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 24), (24, 16)] * (n_tensors // 2)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = optimized.Automagic_CameAMP_8Bit(params, compat="upstream", **CASES["defaults, W 8, B 64, sync 5"])
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_seed004_graph_count_does_not_grow_with_tensor_count():
    """Seed 004's class compiles one graph per phase for stacks of matrices of any shape and count (the block
    indices are inputs, not part of the graph); as for Improved, 200 tensors per shape may add the group
    sum's cascade-sum graph, and another count adds nothing. Counted as increments, without resetting dynamo,
    so test_seed004_equivalence's compiled test reuses these graphs (4 at most: the phases and Σ|g|)."""
    start = counters["stats"]["unique_graphs"]
    _train_seed004(4)
    few = counters["stats"]["unique_graphs"]
    _train_seed004(400)
    many = counters["stats"]["unique_graphs"]
    _train_seed004(300)
    assert few - start <= 4, few - start
    assert many - few <= 1, many - few
    assert counters["stats"]["unique_graphs"] == many


def test_8bit_loads_take_the_one_instruction_path():
    """optimized.compile patches inductor's AVX2 load of 8 uint8 values (a stack copy that stalls) into
    ATen's one-instruction loadu_one_fourth; the results are unchanged. On AVX-512 inductor already
    loads them that way, and the patch has nothing to do."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.utils import run_and_get_code

    from optimized.compile import FAST_BYTE_LOADS

    assert FAST_BYTE_LOADS
    codes = torch.randint(0, 256, (64, 256), dtype=torch.uint8)
    table = torch.randn(256)
    x = torch.randn(64, 256)

    def decode_add(codes, table, x):
        return x + table[codes.int()] * codes.float()

    torch._dynamo.reset()
    out, (code,) = run_and_get_code(torch.compile(decode_add), codes, table, x)
    assert torch.equal(out, decode_add(codes, table, x))
    if cpu_vec_isa.pick_vec_isa().bit_width() == 256:
        assert "loadu_one_fourth" in code and "Vectorized<uint8_t>::loadu(" not in code
