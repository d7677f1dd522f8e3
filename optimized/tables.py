"""Host → kernel tables: the numbers a pass reads per tensor or per group, as the fields of a named tuple (a pass
reads `coef.beta1_t`, not `coef[:, 4]`). The fields are views of one tensor, so a table costs one copy to the device.
"""

from __future__ import annotations

import numpy as np
import torch


def constants(values, device, dtype=torch.float64) -> tuple:
    """0-d tensors from numbers (taken in float64, then cast to `dtype`)."""
    return torch.tensor(list(values), dtype=torch.float64, device=device).to(dtype).unbind()


def columns(values, device, dtype=torch.float64) -> tuple:
    """[T] tensors from per-tensor numpy arrays: the columns of one [T, len(values)] tensor."""
    return torch.from_numpy(np.stack(values, axis=1).astype(np.float64)).to(device=device, dtype=dtype).unbind(1)
