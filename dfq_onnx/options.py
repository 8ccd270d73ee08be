"""User options: one frozen dataclass, validated once; the caller's object is never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .numerics import SUPPORTED_BITS

CALIB_MODES = ("synthetic", "noise", "analytic")
ALLOCATORS = ("ilp-pairs", "ilp", "greedy", "uniform")


@dataclass(frozen=True)
class QuantizeOptions:
    weight_bits: int | None = None       # None: the target's default
    act_bits: int | None = None
    calib: str = "synthetic"             # "synthetic" | "analytic" | "noise" | path to an .npz of inputs
    calib_samples: int = 64              # samples generated for noise calibration
    calib_batch: int = 32
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # hints for dynamic dims
    seed: int = 0
    act_range: str = "minmax"            # "minmax" | "percentile"
    percentile: float = 99.99
    progress: bool = True
    # synthetic calibration (passes/synthesize.py)
    synth_samples: int = 64
    synth_steps: int | None = None       # None: the pass's default
    cache_dir: str | None = None         # None: per-user cache directory
    use_cache: bool = True
    # mixed precision (a budget switches UniformPlan for ScoreSensitivity + AllocateBits)
    avg_weight_bits: float | None = None
    size_mb: float | None = None
    bops_ratio: float | None = None
    max_drop: float | None = None        # predicted loss target (KL at the output) instead of a budget
    allocator: str = "ilp"                # "ilp-pairs" adds pairwise terms (more evaluations)
    score_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    hops: int = 2

    @property
    def mixed(self) -> bool:
        budgets = (self.avg_weight_bits, self.size_mb, self.bops_ratio, self.max_drop)
        return any(v is not None for v in budgets)

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            value = getattr(self, name)
            if value is not None and value not in SUPPORTED_BITS:
                raise UsageError(f"--{name.replace('_', '-')} {value}: expected one of "
                                 f"{', '.join(map(str, SUPPORTED_BITS))}")
        if self.calib not in CALIB_MODES and not str(self.calib).endswith(".npz"):
            raise UsageError(f"--calib {self.calib}: expected 'synthetic', 'analytic', 'noise' or a path "
                             "to an .npz file")
        if self.calib.endswith(".npz") and not Path(self.calib).is_file():
            raise UsageError(f"--calib {self.calib}: file not found")
        if self.calib_samples < 1 or self.calib_batch < 1:
            raise UsageError("calibration sample and batch counts must be positive")
        if self.act_range not in ("minmax", "percentile"):
            raise UsageError(f"--act-range {self.act_range}: expected 'minmax' or 'percentile'")
        if self.allocator not in ALLOCATORS:
            raise UsageError(f"--allocator {self.allocator}: expected one of {', '.join(ALLOCATORS)}")
        for name in ("avg_weight_bits", "size_mb", "bops_ratio", "max_drop"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"--{name.replace('_', '-')} {value}: expected a positive number")
        if self.mixed and (self.weight_bits is not None):
            raise UsageError("--weight-bits sets a uniform plan; drop it when giving a mixed-precision "
                             "budget")
        if self.synth_samples < 1 or self.hops < 0:
            raise UsageError("--synth-samples must be positive and --hops non-negative")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"--percentile {self.percentile}: expected a value in (50, 100]")
