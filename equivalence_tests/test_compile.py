"""The fused step compiles a bounded number of graphs, independent of how many tensors there are."""

import torch
from torch._dynamo.utils import counters

import optimized


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
