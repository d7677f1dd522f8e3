"""The loop the papers' standalone optimizers share (issue 3): the closure runs with grad enabled, each
parameter with a gradient is checked (sparse or complex gradients are refused with a TypeError before any
state changes, zero-size tensors are skipped) and handed to `_update(p, grad, state, group)`."""

from __future__ import annotations

import torch

from .validation import check_grad, check_paper_kwargs


class PaperOptimizer(torch.optim.Optimizer):
    def __init__(self, params, defaults: dict):
        check_paper_kwargs(defaults)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            for p in params:
                check_grad(p, type(self).__name__)
            for p in params:
                self._update(p, p.grad, self.state[p], group)
        return loss

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    @staticmethod
    def _count_step(state, p, *moments) -> int:
        """On the first call create `step` and the named moments at zero; then t += 1. Returns t."""
        if not state:
            state["step"] = 0
            for name in moments:
                state[name] = torch.zeros_like(p)
        state["step"] += 1
        return state["step"]
