"""The flat-buffer classes and the bytes they hold, for the frozen-parameter and row-width tests."""

import torch

FLAT = ["Automagic_CameAMP", "Automagic_CameAMP8bit", "Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit",
        "HinaAdamWOptimizer"]  # fmt: skip


def held_bytes(opt) -> int:
    """Bytes of state held: the fast classes' buffers, or the reference's state tensors."""
    if hasattr(opt, "state_bytes"):
        return opt.state_bytes()
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
