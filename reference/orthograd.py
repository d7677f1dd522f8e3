"""⊥Grad / OrthoGrad, norm-preserving form (spec T7a).

Paper: Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025, arXiv:2501.04697,
the ⊥Grad update: g⊥ = g − (⟨θ,g⟩/⟨θ,θ⟩)·θ. The authors' `orthograd.py` (and this family) then rescale
g⊥ to the norm of g.

Family variant: applied to the update direction U (not the raw gradient), only while t < W/2.
This implementation is out of place; upstream overwrites its input, which is harmless in
Automagic_CameAMP because the input is a fresh tensor [I-06].

Degenerate case (found here, not in upstream-issues.md): when U is parallel to θ, v⊥ is 0 in exact
arithmetic and the computed v⊥ is rounding noise, which the rescaling blows up to ‖U‖. That always
happens for one-element tensors, so upstream gives every scalar parameter a full-size step of
arbitrary sign while t < W/2. `parallel_tol > 0` (the corrected mode) returns 0 when
‖v⊥‖ ≤ parallel_tol·‖v‖: no radial step, which is what ⊥Grad means.
"""

from __future__ import annotations

import torch

PARALLEL_TOL = 1e-5  # corrected mode: ‖v⊥‖/‖v‖ below this is rounding noise (~80 fp32 ulps)


def orthograd(theta: torch.Tensor, x: torch.Tensor, parallel_tol: float = 0.0) -> torch.Tensor:
    """Return x with its component along θ removed, rescaled to ‖x‖."""
    # If ‖θ‖₂ ≤ 1e-30 the projection is undefined: return x unchanged
    if float(theta.norm(2)) <= 1e-30:
        return x
    v = x.reshape(-1)
    w = theta.reshape(-1).to(v.dtype)
    # ν = ‖v‖₂ (before modification)
    nu = v.norm(2)
    # π = ⟨w,v⟩ / (⟨w,w⟩ + 1e-30)
    proj = torch.dot(w, v) / torch.dot(w, w).add(1e-30)
    # v⊥ = v − π·w
    v_perp = v.sub(w, alpha=float(proj))
    perp_norm = v_perp.norm(2)
    if parallel_tol > 0 and float(perp_norm) <= parallel_tol * float(nu):
        return torch.zeros_like(x)
    # result = v⊥ · ν / (‖v⊥‖₂ + 1e-30)
    return (v_perp * (nu / perp_norm.add(1e-30))).reshape(x.shape)


def project_out(theta: torch.Tensor, grad: torch.Tensor, parallel_tol: float = 0.0) -> torch.Tensor:
    """HinaAdamW's orthogonal gradient (spec T7c): g − (⟨θ,g⟩/⟨θ,θ⟩)·θ for θ.ndim ≥ 2, no rescaling.

    Degenerate case (found by the randomised differential check, not in upstream-issues.md): where g is parallel
    to θ (always so for a one-element matrix), g⊥ is 0 in exact arithmetic and the computed g⊥ is rounding noise,
    which Adam's normalisation m/(√v + ε) turns into a step of up to η with an arbitrary sign (fp32 noise of
    ~1e-8·‖g‖ is ε's size at ‖g‖ ~ 1). `parallel_tol > 0` (the corrected mode) returns 0 where
    ‖g⊥‖ ≤ parallel_tol·‖g‖, as T7a's `orthograd` does."""
    if theta.dim() < 2:
        return grad
    w, g = theta.reshape(-1), grad.reshape(-1)
    ww = torch.dot(w, w)
    if float(ww) <= 0:
        return grad
    # g⊥ = g − (⟨w,g⟩/⟨w,w⟩)·w
    perp = g - (torch.dot(w, g) / ww) * w
    if parallel_tol > 0 and float(perp.norm()) <= parallel_tol * float(g.norm()):
        return torch.zeros_like(grad)
    return perp.reshape(grad.shape)


class OrthoGrad(torch.optim.Optimizer):
    """The paper's ⊥Grad wrapper (Prieto et al., ICLR 2025; official `orthograd.py`): before the wrapped
    optimizer steps, each gradient is replaced by its component orthogonal to its weights, rescaled to
    the gradient's norm (`orthograd` with `parallel_tol`, which zeroes a gradient parallel to θ as
    pytorch-optimizer's `OrthoGrad` does). `OrthoGrad(AdamW(params))` is ⊥AdamW. The family applies the
    projection to the update direction instead [I-06 and T7a]."""

    def __init__(self, optimizer: torch.optim.Optimizer, parallel_tol: float = 4 * torch.finfo(torch.float32).eps):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.parallel_tol = parallel_tol
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state
        self.defaults = optimizer.defaults

    @torch.no_grad()
    def _project(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.numel() > 0:
                    p.grad.copy_(orthograd(p.detach(), p.grad, self.parallel_tol))

    def step(self, closure=None):
        if closure is None:
            self._project()
            return self.optimizer.step()

        def projected():
            with torch.enable_grad():
                loss = closure()
            self._project()
            return loss

        return self.optimizer.step(projected)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)
