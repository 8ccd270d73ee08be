"""The options and the result of synthetic calibration (passes/synthesize.py, passes/synthesize_tokens.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dfq_onnx.core.errors import UsageError

OBJECTIVES = ("auto", "bn", "label", "bn+label", "sequence", "bn+sequence")


@dataclass(frozen=True)
class SynthesisOptions:
    samples: int = 64
    steps: int | None = None    # ES steps in total, split over the stages (None: 0 for the BN
                                #  objective, budgeted <= 80 for the label objectives)
    population: int = 2         # antithetic pairs per sample and step (2P rows per sample per step)
    seed: int = 0
    objective: str = "auto"     # "bn" | "label" | "bn+label" | "auto" (bn if BN statistics exist,
                                #  else label)
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True
    input_ranges: dict = field(default_factory=dict)   # {input: (lo, hi)}: the model's pixel range when it
                                                       #  is not standardized (synth/search.py squash)
    prefixed: tuple[str, ...] = ()   # inputs an in-graph prefix scales (preprocess.py): their range is known,
                                     #  not inferred (synth/input_range.py)

    def __post_init__(self):
        if self.samples < 1 or (self.steps is not None and self.steps < 0) or self.population < 1:
            raise UsageError(f"synthesis: samples ({self.samples}) and population ({self.population}) must "
                             f"be positive and steps ({self.steps}) non-negative")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--synth-objective {self.objective}: expected one of {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class SynthesisResult:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    loss_start: float | None    # None: no search (the prior's samples; the objective is not run)
    loss_end: float | None
    forward_passes: int         # ORT run calls (one per chunk of rows)
    samples_evaluated: int      # rows evaluated over all calls
    seconds: float
    cache_hit: bool
    objective: str
    steps: int = 0              # ES steps of the search (also reported on a cache hit)
    start: str = "pink"         # what the samples start from: "pink" (1/f fields), "strokes" (drawings),
                                #  "tokens" (token sequences)
    preprocessed: tuple[str, ...] = ()   # inputs sampled after their in-graph scale-and-shift (preprocess.py)
    channels_last: tuple[str, ...] = ()  # [N, H, W, C] inputs, sampled channels-first (layout.py)
    planes: tuple[str, ...] = ()         # [N, H, W] inputs read as one-channel images (layout.py)
    twin: dict[str, np.ndarray] | None = None   # line drawings: the same shapes at the prior's contrast
                                                #  (synth/strokes.py; passes/twin_ranges.py reads them)
    inferred: dict = field(default_factory=dict)   # {input: RangeInference}: ranges read off the model
    pixel_drawn: dict = field(default_factory=dict)   # {input: (lo, hi)}: a prefix that cannot standardize
                                                      #  its pixels: drawn in them (synth/preprocess.py)
    pages: dict = field(default_factory=dict)     # line-drawing pages offered to a dense-output model: what
                                                  #  its probe measured, whether taken (synth/pages.py)
    kept_bn: dict = field(default_factory=dict)   # the prior measured on BNs left after activations and what
                                                  #  was picked (synth/envelopes.py)
