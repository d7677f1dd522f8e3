"""The Automagic_CameAMP constructor arguments, with upstream's defaults (spec optimizers.md O1).

Like upstream's `OptimizerConfig(**kwargs)`, an unknown keyword raises TypeError. Both the reference and
the optimized class are built from this, so their keyword arguments cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .validation import (
    check_8bit_kwargs,
    check_automagic_kwargs,
    check_bool,
    check_improved_8bit_kwargs,
    check_improved_kwargs,
    check_nonfinite_policy,
)  # fmt: skip


def _normalise(config) -> None:
    """Upstream forces eta to 2.0 when it is not an int/float; eps and betas become tuples."""
    check_nonfinite_policy(config.nonfinite)
    ok = isinstance(config.eta, (int, float)) and not isinstance(config.eta, bool)
    config.eta = float(config.eta) if ok else 2.0
    config.eps, config.betas = tuple(config.eps), tuple(config.betas)


def _check_improved(config) -> None:
    """The Improved classes' shared checks (the Automagic table without wd_until, and the Improved keys)."""
    _normalise(config)
    check_automagic_kwargs(config.group_defaults(), compat=config.compat, wd_until="warmup_half")
    check_improved_kwargs(asdict(config))


@dataclass
class AutomagicConfig:
    # Settings that live outside the param groups
    CONSTRUCTOR_ONLY = ("verbose", "compat", "wd_until", "nonfinite")

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
    compat: str = "fixed"  # the corrections of upstream-issues.md (default), or "upstream" numerics
    wd_until: str = "warmup_half"  # [I-48] "always" keeps adaptive weight decay on (fixed mode only)
    nonfinite: str = "raise"  # NaN/Inf gradients: "raise" (ValueError) or "skip" the step (with a warning)

    def __post_init__(self):
        _normalise(self)
        check_bool("verbose", self.verbose)
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


@dataclass
class ImprovedCommonConfig:
    """The keys every Improved class shares (Improved S2, seed 004's 8-bit class on S2o, Improved_8Bit S3),
    with upstream's defaults (spec O6–O8). Which of them a class ignores is said in its docstring."""

    CONSTRUCTOR_ONLY = ("verbose", "compat", "nonfinite")

    lr: float = 1e-6
    min_lr: float = 1e-7
    max_lr: float = 1e-3
    lr_bump: float = 3e-6
    eps: tuple = (1e-30, 1e-16, 1e-8)  # ε1 CAME/TAM (and dual), ε2 residual, ε3 unused
    clip_threshold: float = 1.0
    betas: tuple = (0.8, 0.99, 0.999)  # β1 consistency (and dual), β2 dual, β3 residual after W/2
    eta: float = 2.0  # unused (upstream's row_scaling is dead state [I-47])
    weight_decay: float = 5e-4  # SPD in S2/S2o; adaptive weight decay in S3
    warmup_steps: int = 500
    edge_threshold: float = 0.6
    came: bool = True
    full_finetune: bool = False  # unused [I-47]
    verbose: bool = False
    edge_suppression: bool = True
    edge_penalty: float = 0.1
    background_regularization: bool = True
    spatial_awareness: bool = True
    frequency_penalty: float = 0.05
    detail_preservation: float = 0.8
    lora_rank_penalty: bool = True
    rank_penalty_strength: float = 0.01
    low_rank_emphasis: float = 1.2
    compat: str = "fixed"
    nonfinite: str = "raise"  # NaN/Inf gradients: "raise" or "skip" the step

    def __post_init__(self):
        _check_improved(self)

    def group_defaults(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.CONSTRUCTOR_ONLY}


@dataclass
class ImprovedFamilyConfig(ImprovedCommonConfig):
    """The keys Improved (S2) and seed 004's 8-bit class (S2o) share; each subclass adds its own (spec O6, O8)."""

    beta1_decay: float = 0.9995


@dataclass
class ImprovedConfig(ImprovedFamilyConfig):
    """Automagic_CameAMP_Improved: upstream's `ImprovedOptimizerConfig` (spec O6), plus `compat`."""

    CONSTRUCTOR_ONLY = (*ImprovedFamilyConfig.CONSTRUCTOR_ONLY, "enable_cache", "max_cache_size", "use_approximate_svd")

    d_coef: float = 2.0
    enable_cache: bool = True  # upstream's TensorCache holds no numerics [I-33]; accepted, no cache kept
    max_cache_size: int = 100
    use_approximate_svd: bool = True
    enable_dual_momentum: bool = True
    long_term_beta: float = 0.99
    alpha_mix_ratio: float | None = None  # None: (1 − β1)/(1 − long_term_beta)


@dataclass
class Optimizer8BitConfig(ImprovedFamilyConfig):
    """Seed 004's `Automagic_CameAMP_8Bit` settings (spec O8): the S2o Improved keys with their defaults,
    the quantisation keys with seed 004's, and `compat`. The experimental block-size keys are accepted and
    ignored with a warning (spec decision)."""

    CONSTRUCTOR_ONLY = (*ImprovedFamilyConfig.CONSTRUCTOR_ONLY, "quantize_states", "error_correction", "block_size",
                        "mixed_precision", "sync_frequency", "adaptive_block_size", "min_block_size",
                        "max_block_size")  # fmt: skip

    quantize_states: bool = True
    error_correction: bool = True
    block_size: int = 256
    mixed_precision: bool = True  # False also quantises lr_mask and spatial_variance (spec decision)
    sync_frequency: int = 100  # every N steps fold the error accumulator into the codes (0: never)
    adaptive_block_size: bool = False  # experimental in seed 004: accepted, ignored
    min_block_size: int | None = None
    max_block_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_8bit_kwargs(asdict(self))


@dataclass
class Improved8BitConfig(ImprovedCommonConfig):
    """Automagic_CameAMP_Improved_8Bit: upstream's `Improved8BitOptimizerConfig` (spec O7), plus `compat`,
    `nonfinite` and `seed` (the post-warm-up random walk's own generator [I-31]). `profile` is taken by the
    optimizer. Accepted and ignored, as upstream does [I-17, I-47]: min_lr, max_lr, lr_bump, clip_threshold,
    eta, full_finetune, background_regularization, detail_preservation, low_rank_emphasis, optim_bits,
    percentile_clipping, block_wise, stable_emb, fused_adam. Here β3 and ε2 serve only came=False."""

    CONSTRUCTOR_ONLY = (*ImprovedCommonConfig.CONSTRUCTOR_ONLY, "seed", "fused_adam", "force_8bit")

    adaptation_rate: float = 0.25  # T4c: s ← a·s + (1 − a)·corr
    optim_bits: int = 8
    percentile_clipping: int = 100
    block_wise: bool = True
    min_8bit_size: int = 4096  # fp32 states of tensors with at least this many elements are stored 8-bit
    stable_emb: bool = False
    fused_adam: bool = False
    force_8bit: bool = False  # 8-bit regardless of size (the documented meaning; upstream inverts it [I-17])
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_improved_8bit_kwargs(asdict(self))

    def group_defaults(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.CONSTRUCTOR_ONLY}
