"""User options: one frozen dataclass, validated once; the caller's object is never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

CALIB_MODES = ("noise", "analytic")


@dataclass(frozen=True)
class QuantizeOptions:
    weight_bits: int | None = None       # None: the target's default
    act_bits: int | None = None
    calib: str = "analytic"              # "noise" | "analytic" | path to an .npz of preprocessed inputs
    calib_samples: int = 64              # samples generated for noise calibration
    calib_batch: int = 32
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # hints for dynamic dims
    seed: int = 0
    act_range: str = "minmax"            # "minmax" | "percentile"
    percentile: float = 99.99
    progress: bool = True

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            value = getattr(self, name)
            if value is not None and value not in (2, 3, 4, 8, 16):
                raise UsageError(f"--{name.replace('_', '-')} {value}: expected one of 2, 3, 4, 8, 16")
        if self.calib not in CALIB_MODES and not str(self.calib).endswith(".npz"):
            raise UsageError(f"--calib {self.calib}: expected 'noise', 'analytic' or a path to an .npz file")
        if self.calib.endswith(".npz") and not Path(self.calib).is_file():
            raise UsageError(f"--calib {self.calib}: file not found")
        if self.calib_samples < 1 or self.calib_batch < 1:
            raise UsageError("calibration sample and batch counts must be positive")
        if self.act_range not in ("minmax", "percentile"):
            raise UsageError(f"--act-range {self.act_range}: expected 'minmax' or 'percentile'")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"--percentile {self.percentile}: expected a value in (50, 100]")
