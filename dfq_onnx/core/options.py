"""User options: one frozen dataclass, validated once; the caller's object is never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.numerics import SUPPORTED_BITS
from dfq_onnx.core.target import FLOAT_BITS

CALIB_MODES = ("synthetic", "noise", "analytic")
ALLOCATORS = ("ilp-pairs", "ilp", "greedy", "uniform")
# sensitivity losses at the output (sensitivity/table.py)
METRICS = ("auto", "kl", "ce", "mse", "sqnr", "cosine")


@dataclass(frozen=True)
class QuantizeOptions:
    weight_bits: int | None = None       # None: the target's default
    act_bits: int | None = None          # None: the target's default, or chosen per activation group
                                         # where the target offers choices; 32: float (weight-only)
    calib: str = "synthetic"             # "synthetic" | "analytic" | "noise" | path to an .npz of inputs
    calib_samples: int = 64              # samples generated for noise calibration
    calib_batch: int | None = None       # rows per forward call; None: from the activation footprint
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # hints for dynamic dims
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # pixel range of image
                                         # inputs that are not standardized, e.g. {"images": (0, 1)}: the
                                         # synthetic samples are drawn in it (synth/search.py squash)
    input_values: dict[str, float] = field(default_factory=dict)  # scalar inputs pinned for the compile,
                                         # e.g. {"sr": 16000}: folded as constants (declared_io.pin_inputs);
                                         # the written model keeps the input, its value baked in
    seed: int = 0
    act_range: str = "minmax"            # "minmax" | "percentile"
    percentile: float = 99.99
    progress: bool = True
    # synthetic calibration (passes/synthesize.py)
    synth_samples: int = 64
    synth_steps: int | None = None       # None: the pass's default
    synth_views: int | None = None       # calibration rows per synthetic image sample (synth/augment.py);
                                         # None: up to 8 within the work budget (passes/calibrate.py)
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
    metric: str = "auto"                 # sensitivity metric at the output (dfq_onnx/sensitivity/table.py)
    pareto: str | None = None            # write the Pareto curve here (JSON + PNG); a budget is optional
    latency_ms: float | None = None      # whole-model latency budget (needs latency_table)
    latency_table: str | None = None     # JSON written by `dfq-onnx profile-target`
    latency_check: bool = True           # default plan: time FP32 vs integer once, keep float if slower
                                         # (passes/keep_float.py)
    # data-free accuracy passes (issue 7; defaults from the ablation in BENCHMARKS.md)
    cle: bool = False                    # cross-layer equalization (passes/equalize.py)
    cle_criterion: str = "weights"       # "weights" (Nagel) | "activations" | "auto" (see passes/equalize.py)
    smooth: bool | None = None           # outlier migration into static MatMul weights (passes/smooth.py);
                                         # None: the target's [activation] smoothing (off, or outliers only)
    twin_ranges: bool = True             # line drawings' contrast twins' ranges (twin_ranges.py)
    bias_absorption: bool = False        # high-bias absorption (passes/absorb_bias.py)
    bias_correction: bool | None = None  # analytic bias correction (passes/bias_correction.py);
                                         # None: on (BENCHMARKS.md, issue 13 session 5)
    dfmpc: bool = False                  # DF-MPC compensation of low- by higher-precision layers
    weight_clip: bool = False            # low-bit weights: moment-weighted clip search (core/weight_clip.py)
    gptq: bool | None = None             # low-bit weights: GPTQ rounding on the inputs' H (core/gptq.py);
                                         # None: after the plan (the table scores round-to-nearest),
                                         # True: the table scores GPTQ's weights too, False: never
    dither_scoring: bool = False         # mixed: weight terms over two activation grids, 0 exact in
                                         # both (sensitivity/dither.py)

    @property
    def correct_bias(self) -> bool:
        """Whether CorrectBias runs: the user's choice, else on. It brings every measured model closer
        to FP32 (agreement and KL to FP32's softmax: ResNet-20/56 W8A8 and W4A8, EfficientNet-Lite0
        W8A8 +0.8 top-1); the top-1 it costs on ResNet-56 (W8A8 83.37 -> 83.13, FP32 83.20) is a plan
        that sat above FP32 by chance (BENCHMARKS.md, issue 13 session 5). Mixed plans score every
        candidate with its correction."""
        return True if self.bias_correction is None else self.bias_correction

    @property
    def mixed(self) -> bool:
        budgets = (self.avg_weight_bits, self.size_mb, self.bops_ratio, self.max_drop, self.pareto,
                   self.latency_ms)
        return any(v is not None for v in budgets)

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            value = getattr(self, name)
            legal = SUPPORTED_BITS + ((FLOAT_BITS,) if name == "act_bits" else ())
            if value is not None and value not in legal:
                raise UsageError(f"--{name.replace('_', '-')} {value}: expected one of "
                                 f"{', '.join(map(str, legal))}" + (" (32: float activations)"
                                                                    if name == "act_bits" else ""))
        if self.calib not in CALIB_MODES and not str(self.calib).endswith(".npz"):
            raise UsageError(f"--calib {self.calib}: expected 'synthetic', 'analytic', 'noise' or a path "
                             "to an .npz file")
        if self.calib.endswith(".npz") and not Path(self.calib).is_file():
            raise UsageError(f"--calib {self.calib}: file not found")
        if self.calib_samples < 1 or (self.calib_batch is not None and self.calib_batch < 1):
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
        if self.pareto is not None and not str(self.pareto).endswith(".json"):
            raise UsageError(f"--pareto {self.pareto}: expected a .json path (the PNG is written beside it)")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise UsageError(f"--latency-ms {self.latency_ms}: expected a positive number")
        if self.latency_ms is not None and self.latency_table is None:
            raise UsageError("--latency-ms needs --latency-table FILE (write one with `dfq-onnx "
                             "profile-target TARGET MODEL -o FILE`)")
        if self.latency_table is not None and not Path(self.latency_table).is_file():
            raise UsageError(f"--latency-table {self.latency_table}: file not found")
        if self.synth_samples < 1 or self.hops < 0:
            raise UsageError("--synth-samples must be positive and --hops non-negative")
        if self.metric not in METRICS:
            raise UsageError(f"--metric {self.metric}: expected one of {', '.join(METRICS)}")
        for name, (lo, hi) in self.input_ranges.items():
            if not lo < hi:
                raise UsageError(f"--input-range {name}:{lo},{hi}: expected LOW < HIGH")
        if self.synth_views is not None and self.synth_views < 1:
            raise UsageError(f"--synth-views {self.synth_views}: expected a positive number")
        if self.cle_criterion not in ("weights", "activations", "auto"):
            raise UsageError(f"--cle-criterion {self.cle_criterion}: expected weights, activations or auto")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"--percentile {self.percentile}: expected a value in (50, 100]")
