"""The fused step compiles a bounded number of graphs, independent of how many tensors there are."""

import pytest
import torch
from torch._dynamo.utils import counters

import optimized
from optimized import kernels as K

from .tolerances import ROW_NORM_FP64_PER_TERM

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


def _improved():
    from .cases.improved import CASES

    return optimized.Automagic_CameAMP_Improved, CASES["defaults, W 8"], 5, 1


def _seed004():
    from .cases.seed004 import CASES

    return optimized.Automagic_CameAMP_8Bit, CASES["defaults, W 8, B 64, sync 5"], 4, 1


def _improved8():
    from .cases.improved8 import CASES

    return optimized.Automagic_CameAMP_Improved_8Bit, CASES["defaults, W 8, 8-bit from 256 elements"], 5, 3


def _train_stacks(cls, kwargs, n_tensors, steps=9):
    """The class's compiled test settings (its 2-D graphs come from the inductor cache), every phase:
    early (t < W/2), warm-up, post warm-up. Improved_8Bit's matrices are LoRA layers, as in its test."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 24), (24, 16)] * (n_tensors // 2)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    if cls is optimized.Automagic_CameAMP_Improved_8Bit:
        for p in params:
            p._is_lora_layer = True
    opt = cls(params, compat="upstream", **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


@pytest.mark.parametrize(
    "settings", [_improved, _seed004, _improved8], ids=["Improved", "8Bit (seed 004)", "Improved_8Bit"]
)
def test_stacked_graph_count_does_not_grow_with_tensor_count(settings):
    """The stacked classes compile one graph per phase and stack class with every dimension symbolic from
    the start (stacks of one tensor and stacks over 4,096 elements per tensor aside; seed 004's block
    indices are inputs, not part of the graph): two shapes of matrix share them (Improved: at most 5 graphs
    with Σ|g| and its cascade variant; seed 004: 4; Improved_8Bit: 5, Σ|g| being compiled by then, and
    T10's group μ and σ two passes of their own, μ's fp32 Σ|g| a variant in upstream mode), 200
    tensors per shape compile at most one graph more per group reduction (Σ|g|; Improved_8Bit's μ and σ too) as
    a stack crosses 4,096 elements, where inductor switches to a cascade sum, and 150 per shape nothing more.
    Counted as increments, without resetting dynamo, so the classes' compiled equivalence tests reuse these
    graphs."""
    cls, kwargs, few_bound, group_reductions = settings()
    start = counters["stats"]["unique_graphs"]
    _train_stacks(cls, kwargs, 4)
    few = counters["stats"]["unique_graphs"]
    _train_stacks(cls, kwargs, 400)
    many = counters["stats"]["unique_graphs"]
    _train_stacks(cls, kwargs, 300)
    assert few - start <= few_bound, few - start
    assert many - few <= group_reductions, many - few
    assert counters["stats"]["unique_graphs"] == many


def test_8bit_loads_take_the_one_instruction_path_in_our_passes_only():
    """Our compiled passes get inductor's AVX2 load of 8 uint8 values (a stack copy that stalls) as ATen's
    one-instruction loadu_one_fourth; the results are unchanged. The user's own torch.compile, and dynamo's
    recompile limit, are as torch leaves them (issue 25: no import-time global side effects). On AVX-512
    inductor already loads them that way, and the change has nothing to do."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.codegen import cpp
    from torch._inductor.utils import run_and_get_code

    from optimized.compile import compiled, fast_byte_loads

    assert fast_byte_loads()
    codes = torch.randint(0, 256, (64, 256), dtype=torch.uint8)
    table = torch.randn(256)
    x = torch.randn(64, 256)

    def decode_add(codes, table, x):
        return x + table[codes.int()] * codes.float()

    def decode_mul(codes, table, x):  # a second function, so that the user's compile is a graph of its own
        return x * table[codes.int()] * codes.float()

    limit, load_line = torch._dynamo.config.recompile_limit, cpp.CppVecKernel._get_vec_load_line
    # no dynamo reset (the stacked classes' graphs above are reused by their compiled tests); the FX graph
    # cache is off so that the kernels are generated, and their code seen, even on a warm cache
    with torch._inductor.config.patch(fx_graph_cache=False):
        ours, (our_code,) = run_and_get_code(compiled(decode_add), codes, table, x)
        users, (user_code,) = run_and_get_code(torch.compile(decode_mul), codes, table, x)
    assert torch.equal(ours, decode_add(codes, table, x)) and torch.equal(users, decode_mul(codes, table, x))
    assert torch._dynamo.config.recompile_limit == limit and cpp.CppVecKernel._get_vec_load_line is load_line
    if cpu_vec_isa.pick_vec_isa().bit_width() == 256:
        assert "loadu_one_fourth" in our_code and "Vectorized<uint8_t>::loadu(" not in our_code
        assert "Vectorized<uint8_t>::loadu(" in user_code


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 16), (2, 4, 32), (2, 3, 33), (2, 16, 768), (700, 768, 16)])
def test_compiled_row_norms_are_the_float64_norms(shape, dtype):
    """kernels.wide_class_norms (ALLoRA's per-step ρ in the corrected mode, compiled: short rows column by column)
    is torch's eager float64 vector_norm up to the order of its sum (ROW_NORM_FP64_PER_TERM per term)."""
    block = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    eager = torch.linalg.vector_norm(block, dim=2, dtype=torch.float64)
    fused = K.wide_class_norms(block)
    assert fused.dtype == torch.float64 and fused.shape == eager.shape
    bound = shape[-1] * ROW_NORM_FP64_PER_TERM.bound
    assert ((fused - eager).abs() <= bound * eager).all()
