"""Compare reference.Automagic_CameAMP_Improved (compat="upstream") with upstream's, step for step.

Usage: python -m tools.upstream_improved_parity PATH/TO/library/automagic_cameamp_improved.py [--steps 300]

The upstream file (hinablue/sd-scripts @ 803cb56) is not part of this repository; pass its path.
bf16 runs switch the rank penalty off: torch has no bf16 eigh/SVD on CPU, so upstream raises there.
W stays ≤ 500, where upstream's TAM state stays finite [I-09].
"""

from __future__ import annotations

from reference.automagic_cameamp_improved import Automagic_CameAMP_Improved
from tools.upstream_parity import case_rows, cli

NAME = "Automagic_CameAMP_Improved"
# (120, 100) crosses the 10000-element correlation switch [I-18]; (16, 64) has a non-zero eigen tail
SHAPES = [(16, 64), (64, 16), (33,), (4, 3, 3, 3), (5000,), (120, 100), (1, 7), (7, 1)]
CASES = [
    ("defaults", {}),
    ("W=20", {"warmup_steps": 20}),
    ("W=21, lr=1e-4, wd=1e-2", {"warmup_steps": 21, "lr": 1e-4, "weight_decay": 1e-2}),
    ("W=20, no dual momentum", {"warmup_steps": 20, "enable_dual_momentum": False}),
    ("W=20, came=False", {"warmup_steps": 20, "came": False}),
    ("W=20, exact SVD, clip 0.5, alpha_mix 5", {"warmup_steps": 20, "use_approximate_svd": False,
                                                "clip_threshold": 0.5, "alpha_mix_ratio": 5.0}),
    ("W=20, edge τ=0.05 ×0.5", {"warmup_steps": 20, "edge_threshold": 0.05, "edge_penalty": 0.5}),
    ("W=20, heuristics off", {"warmup_steps": 20, "spatial_awareness": False, "edge_suppression": False,
                              "background_regularization": False, "lora_rank_penalty": False}),
]  # fmt: skip


def rows(upstream, steps):
    return case_rows(upstream, steps, NAME, CASES, {"lora_rank_penalty": False}, name=NAME,
                     classes={NAME: Automagic_CameAMP_Improved}, shapes=SHAPES)  # fmt: skip


if __name__ == "__main__":
    cli(rows, 300)
