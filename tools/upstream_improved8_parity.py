"""Compare reference.Automagic_CameAMP_Improved_8Bit (compat="upstream") with upstream's, step for step.

Usage: python -m tools.upstream_improved8_parity PATH/TO/library/automagic_cameamp_improved_8bit.py [--steps 300]

The upstream file (hinablue/sd-scripts @ 863c5b5) is not part of this repository; pass its path. It needs
bitsandbytes to import. Upstream's 8-bit path calls functions bitsandbytes does not have [I-16] and is
taken only on CUDA, so on CPU it runs in full precision; our 8-bit storage is switched off here with a
large `min_8bit_size` (the 8-bit path is tested in equivalence_tests/test_improved_8bit_reference.py).
The post-warm-up random walk draws from torch's global RNG upstream and from the optimizer's generator
here [I-31]; both are seeded with `seed` before the run, and nothing else draws from either, so the
streams coincide.
bf16 runs switch the edge, FFT and rank penalties off: upstream's fp32 edge mask promotes g' to fp32 and
its OrthoGrad then raises (dot of fp32 and bf16), and torch has no bf16 FFT/SVD on CPU.
"""

from __future__ import annotations

import torch

from reference.automagic_cameamp_improved_8bit import Automagic_CameAMP_Improved_8Bit
from tools.upstream_parity import case_rows, cli

NAME = "Automagic_CameAMP_Improved_8Bit"
SEED = 1234
SHAPES = [(16, 64), (64, 16), (33,), (4, 3, 3, 3), (5000,), (1, 7), (7, 1)]
FULL_PRECISION = {"min_8bit_size": 2**40}
CASES = [
    ("defaults", {}),
    ("W=20", {"warmup_steps": 20}),
    ("W=21, lr=1e-4, wd=1e-2, rate 0.5", {"warmup_steps": 21, "lr": 1e-4, "weight_decay": 1e-2,
                                          "adaptation_rate": 0.5}),
    ("W=20, came=False", {"warmup_steps": 20, "came": False}),
    ("W=20, edge τ=0.05 ×0.5, fft 0.2, k 0.1", {"warmup_steps": 20, "edge_threshold": 0.05, "edge_penalty": 0.5,
                                               "frequency_penalty": 0.2, "rank_penalty_strength": 0.1}),
    ("W=20, heuristics off", {"warmup_steps": 20, "spatial_awareness": False, "edge_suppression": False,
                              "frequency_penalty": 0.0, "lora_rank_penalty": False}),
    ("W=1 (random walk from t=1)", {"warmup_steps": 1}),
]  # fmt: skip


class _SeededUpstream:
    """Builds upstream's class after seeding torch's global RNG as ours is seeded. With came=False upstream
    raises KeyError on `exp_avg_sq` [I-13]; the subclass creates that state at init, the faithful definition,
    so the rest of the branch can be compared."""

    def __init__(self, upstream):
        self.upstream = upstream

    def __getattr__(self, name):
        class WithExpAvgSq(getattr(self.upstream, name)):
            def _init_state(self, p, group=None):
                super()._init_state(p, group)
                self.state[p].setdefault("exp_avg_sq", torch.zeros_like(p))

        def build(params, **kwargs):
            torch.manual_seed(SEED)
            return WithExpAvgSq(params, **kwargs)

        return build


def rows(upstream, steps):
    bf16_off = {"lora_rank_penalty": False, "edge_suppression": False, "frequency_penalty": 0.0}
    cases = [(label, {**FULL_PRECISION, **kwargs}) for label, kwargs in CASES]
    return case_rows(_SeededUpstream(upstream), steps, NAME, cases, bf16_off, name=NAME,
                     classes={NAME: Automagic_CameAMP_Improved_8Bit}, ours_kwargs={"seed": SEED},
                     shapes=SHAPES)  # fmt: skip


if __name__ == "__main__":
    cli(rows, 300)
