"""The Automagic_CameAMP constructor arguments, with upstream's defaults (spec optimizers.md O1).

Like upstream's `OptimizerConfig(**kwargs)`, an unknown keyword raises TypeError. Both the reference and
the optimized class are built from this, so their keyword arguments cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .validation import check_automagic_kwargs


@dataclass
class AutomagicConfig:
    # Settings that live outside the param groups
    CONSTRUCTOR_ONLY = ("verbose", "compat", "wd_until")

    lr: float = 1e-6
    min_lr: float = 1e-7
    max_lr: float = 1e-3
    lr_bump: float = 3e-6
    eps: tuple = (1e-30, 1e-16, 1e-8)  # ε1 CAME/TAM, ε2 residual, ε3 unused
    clip_threshold: float = 1.0
    betas: tuple = (0.8, 0.99, 0.999)  # β1 consistency, β2 second moment, β3 residual
    eta: float = 2.0  # ALLoRA
    beta1_decay: float = 0.9995
    weight_decay: float = 5e-4
    warmup_steps: int = 500
    context_window: int = 30  # unused by this class; upstream's trailing commas made these tuples [I-19]
    edge_threshold: float = 0.6
    adaptation_rate: float = 0.25
    came: bool = True
    full_finetune: bool = False
    verbose: bool = False
    compat: str = "upstream"  # "upstream" numerics or the "fixed" corrections
    wd_until: str = "warmup_half"  # [I-48] "always" keeps adaptive weight decay on (fixed mode only)

    def __post_init__(self):
        # upstream: eta is forced to 2.0 when it is not an int/float
        ok = isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool)
        self.eta = float(self.eta) if ok else 2.0
        self.eps, self.betas = tuple(self.eps), tuple(self.betas)
        check_automagic_kwargs(self.group_defaults(), compat=self.compat, wd_until=self.wd_until)

    def group_defaults(self) -> dict:
        """The param-group defaults: every setting except the constructor-only ones."""
        return {k: v for k, v in asdict(self).items() if k not in self.CONSTRUCTOR_ONLY}


@dataclass
class COptimConfig(AutomagicConfig):
    """Automagic_CameAMP_COptim(8bit): the O1 table plus the C-Optim settings (spec O4, O5)."""

    CONSTRUCTOR_ONLY = (*AutomagicConfig.CONSTRUCTOR_ONLY, "momentum_scales", "preset", "seed")

    momentum_scales: tuple = (1, 5, 20, 100)  # T17; upstream COptim rejects this kwarg [I-37]
    preset: str = "code_s1"  # T16.8 constant set of the contextual multiplier
    seed: int = 0  # the module's own RNG for the stagnation branch [I-31]

    def __post_init__(self):
        super().__post_init__()
        self.momentum_scales = tuple(self.momentum_scales)
        if not self.momentum_scales or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.momentum_scales
        ):
            raise ValueError(f"momentum_scales must be positive integers, got {self.momentum_scales!r}")
