"""The 'C-Optim' contextual LR multiplier and edge-case detector (spec T16, O3).

No paper: this module is original to hinablue/sd-scripts (`ContextualOptimizationModule`,
`library/automagic_cameamp.py` @ 863c5b5). Upstream docs attribute it to arXiv:2411.16085, which is
*Cautious Optimizers* (Liang et al.) and has nothing of this [I-45].

From a history of losses it derives a loss stability ls ∈ [0, 1] (T16.4), an edge-case flag (T16.5) and
an LR multiplier Λ (T16.6), and from a history of gradient signals a consistency gc (T16.3). The
constants come in sets (T16.8, `PRESETS`): `code_s1` is the committed code (default), `seed000_lora`
the seed-000 LoRA tuning (differs only in the per-parameter edge factor, never implemented upstream
[I-38]), and `seed000_original` the seed-000 "original" set (doc-only; cells the seed leaves unstated
are filled from the v1 design document, then from the code). The v0 set of 027caee is not provided.

`edge_threshold` and `adaptation_rate` are stored and never read, as upstream [I-37]; `context_window`
only bounds the histories. Python's global `random` is replaced by a generator owned by the module,
seedable and saved with the optimizer [I-31]. With ``cache_multiplier=True`` (the optimizers' fixed
mode) Λ is computed once per observed loss and cached, so monitoring calls consume no randomness.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContextPreset:
    initial_multiplier: float  # Λ while fewer than 5 losses are known
    edge_cv: float  # edge ⇔ cv > edge_cv or gc < edge_gc or stable_steps > edge_stable_steps
    edge_gc: float
    edge_stable_steps: int
    edge_split: float  # edge multiplier: gc > split → a_hi + b_hi·gc, else a_lo + b_lo·gc
    edge_hi: tuple
    edge_lo: tuple
    stagnation_steps: int  # |long| < 1e-7: stable_steps > this → base + spread·U(0,1), else `stagnation_else`
    stagnation_base: float
    stagnation_spread: float
    stagnation_else: float
    normal: tuple  # default branch: a + b·gc + c·ls
    convergence: tuple  # (cap, gain) for a > 0, (floor, gain) for a < −1e-4
    edge_bounds: tuple  # (min, max); max None = the normal max rule
    normal_min: float
    normal_max: tuple  # (max when gc > 0.9 and ls > 0.8, max otherwise)
    edge_factor: tuple  # per-parameter factor a + b·(gc + ls)/2 while edge (T16.7)


CODE_S1 = ContextPreset(
    initial_multiplier=1.2, edge_cv=0.5, edge_gc=0.2, edge_stable_steps=30,
    edge_split=0.7, edge_hi=(1.0, 0.5), edge_lo=(0.8, 0.6),
    stagnation_steps=15, stagnation_base=1.6, stagnation_spread=0.4, stagnation_else=1.2,
    normal=(1.1, 0.3, 0.2), convergence=((2.0, 150.0), (0.8, 30.0)),
    edge_bounds=(0.6, 3.5), normal_min=0.8, normal_max=(4.0, 3.0), edge_factor=(0.4, 0.4),
)  # fmt: skip
PRESETS = {
    "code_s1": CODE_S1,
    "seed000_lora": ContextPreset(**{**CODE_S1.__dict__, "edge_factor": (0.7, 0.25)}),
    "seed000_original": ContextPreset(
        initial_multiplier=1.0, edge_cv=0.3, edge_gc=0.4, edge_stable_steps=30,
        edge_split=-math.inf, edge_hi=(0.8, 0.3), edge_lo=(0.8, 0.3),
        stagnation_steps=10, stagnation_base=1.3, stagnation_spread=0.2, stagnation_else=1.0,
        normal=(0.9, 0.2, 0.0), convergence=((1.5, 100.0), (0.7, 50.0)),
        edge_bounds=(0.1, None), normal_min=0.3, normal_max=(3.0, 2.0), edge_factor=(0.4, 0.4),
    ),
}  # fmt: skip

WINDOW = 10  # statistics use the last 10 entries, whatever context_window is


class ContextualOptimizationModule:
    def __init__(
        self, context_window=50, edge_threshold=0.9, adaptation_rate=0.1, *,
        preset="code_s1", seed=0, cache_multiplier=False,
    ):  # fmt: skip
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        if isinstance(context_window, bool) or not isinstance(context_window, int) or context_window < 1:
            raise ValueError(f"context_window must be a positive integer, got {context_window!r}")
        self.context_window, self.edge_threshold, self.adaptation_rate = context_window, edge_threshold, adaptation_rate
        self.preset_name, self.preset = preset, PRESETS[preset]
        self.cache_multiplier = cache_multiplier
        self.rng = random.Random(seed)
        self.gradient_history = deque(maxlen=context_window)
        self.loss_history = deque(maxlen=context_window)
        self.lr_history = deque(maxlen=context_window)
        self.performance_history = deque(maxlen=50)
        self.convergence_rate = 0.0
        self.stable_steps = 0
        self._cached = None

    # T16.2
    def update_context(self, gradient: torch.Tensor, loss: float, lr: float) -> None:
        self.gradient_history.append(gradient.detach().clone())
        self.loss_history.append(float(loss))
        self.lr_history.append(float(lr))
        self._cached = None
        if len(self.loss_history) >= 2:
            # Δ = L[−2] − L[−1]
            delta = self.loss_history[-2] - self.loss_history[-1]
            self.performance_history.append(delta)
            if len(self.performance_history) >= 10:
                self.convergence_rate = sum(list(self.performance_history)[-10:]) / 10
                self.stable_steps = self.stable_steps + 1 if abs(delta) < 1e-6 else 0

    # T16.3: mean cosine of consecutive gradient signals over the last 10
    def compute_gradient_consistency(self) -> float:
        if len(self.gradient_history) < 2:
            return 1.0
        recent = list(self.gradient_history)[-WINDOW:]
        cosines = [
            torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).item()
            for a, b in itertools.pairwise(recent)
        ]
        return sum(cosines) / len(cosines)

    def _last_losses(self):
        return torch.tensor(list(self.loss_history)[-WINDOW:])

    # T16.4: ls = clamp(exp(−cv), 0, 1), cv = std/(mean + 1e-8) of the last 10 losses
    def compute_loss_stability(self) -> float:
        if len(self.loss_history) < WINDOW:
            return 1.0
        x = self._last_losses()
        cv = x.std() / (x.mean() + 1e-8)
        return min(1.0, max(0.0, torch.exp(-cv).item()))

    # T16.5
    def detect_edge_case(self) -> bool:
        if len(self.loss_history) < WINDOW:
            return False
        x = self._last_losses()
        cv = x.var().sqrt() / (x.mean() + 1e-8)
        gc = self.compute_gradient_consistency()
        p = self.preset
        return bool(cv > p.edge_cv or gc < p.edge_gc or self.stable_steps > p.edge_stable_steps)

    # T16.6
    def compute_contextual_lr_multiplier(self) -> float:
        if self.cache_multiplier and self._cached is not None:
            return self._cached
        value = self._multiplier()
        if self.cache_multiplier:
            self._cached = value
        return value

    def _multiplier(self) -> float:
        p = self.preset
        if len(self.loss_history) < 5:
            return p.initial_multiplier
        x = self._last_losses()
        short = float((x[-1] - x[-3]) / 2)
        long = float((x[-1] - x[0]) / len(x))
        gc, ls, edge = self.compute_gradient_consistency(), self.compute_loss_stability(), self.detect_edge_case()

        # convergence factor from the mean of the last 5 loss improvements
        cf = 1.0
        if len(self.performance_history) >= 5:
            a = sum(list(self.performance_history)[-5:]) / 5
            (cap, up), (floor, down) = p.convergence
            if a > 0:
                cf = min(cap, 1.0 + a * up)
            elif a < -1e-4:
                cf = max(floor, 1.0 + a * down)

        if edge:
            lo_a, lo_b = p.edge_hi if gc > p.edge_split else p.edge_lo
            lam = lo_a + lo_b * gc
        elif short > 1e-5:  # the loss is rising
            lam = 0.9 + 0.3 * ls
        elif long < -1e-6:  # improving
            if gc > 0.8 and ls > 0.7:
                lam = 1.5 + 0.8 * gc
            elif gc > 0.6:
                lam = 1.3 + 0.4 * gc
            else:
                lam = 1.1 + 0.3 * gc
        elif abs(long) < 1e-7:  # stagnating
            if self.stable_steps > p.stagnation_steps:
                lam = p.stagnation_base + p.stagnation_spread * self.rng.uniform(0, 1)
            else:
                lam = p.stagnation_else
        else:
            a, b, c = p.normal
            lam = a + b * gc + c * ls
        lam *= cf

        good, other = p.normal_max
        normal_max = good if (gc > 0.9 and ls > 0.8) else other
        if edge:
            low, high = p.edge_bounds
            high = normal_max if high is None else high
        else:
            low, high = p.normal_min, normal_max
        return max(low, min(high, lam))

    # T16.7: the per-parameter factor the optimizer applies while edge
    def edge_factor(self) -> float:
        a, b = self.preset.edge_factor
        return a + b * (self.compute_gradient_consistency() + self.compute_loss_stability()) / 2

    # persistence [I-11c]: every history, the counters and the RNG
    def context_state(self) -> dict:
        return {
            "gradient_history": [g.clone() for g in self.gradient_history],
            "loss_history": list(self.loss_history),
            "lr_history": list(self.lr_history),
            "performance_history": list(self.performance_history),
            "convergence_rate": self.convergence_rate,
            "stable_steps": self.stable_steps,
            "rng_state": _rng_state_to_tensor(self.rng.getstate()),
        }

    def load_context_state(self, saved: dict) -> None:
        for key in ("gradient_history", "loss_history", "lr_history", "performance_history"):
            getattr(self, key).clear()
            getattr(self, key).extend(saved[key])
        self.convergence_rate = saved["convergence_rate"]
        self.stable_steps = saved["stable_steps"]
        self.rng.setstate(_rng_state_from_tensor(saved["rng_state"]))
        self._cached = None


def _rng_state_to_tensor(state) -> dict:
    version, words, gauss = state
    return {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss}


def _rng_state_from_tensor(saved) -> tuple:
    return saved["version"], tuple(int(w) for w in saved["words"]), saved["gauss"]
