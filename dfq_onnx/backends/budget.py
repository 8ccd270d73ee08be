"""Compile-time work budgets: how many forward rows a stage may spend, from the model's activation size.

The cost of a forward pass over r rows is about r x E, E = activation elements per row (the outputs of
every Conv/Gemm/MatMul, `dfq_onnx.synth.runner.row_elements`; the synthesis search counts every node's
outputs instead, which follows a transformer's cost better: passes/synthesize.py). A stage whose default
spends a fixed number of rows (Calibrate's views of every sample, the activation decision's scoring rows
times its evaluations) costs 100x more on a 640 x 640 detector than on a 32 x 32 classifier; these rules
cap each stage's work at WORK element-rows instead:

    calibration rows   R   = clamp(WORK // E, min(n, MIN_ROWS), n * views)         (Calibrate)
    scoring rows       n_s = min(n, max(MIN_ROWS, WORK // (E * MIN_EVALS)))      (activation decision)
    evaluations        K   = max(MIN_EVALS_FLOOR, WORK // (n_s * E))

n = samples, views = rows per sample the default would measure (`synth.augment`). Calibration drops
the last views first (row r is view r // n of sample r % n, so R rows are all samples and the first
views); when even one row per sample overruns the work (E > WORK / n: ISNet at 1024 x 1024, E = 167 M,
64 rows = 3.6 x WORK, 12.6 min) it measures the first WORK // E samples, never fewer than MIN_ROWS: a
row that large holds its many positions' extremes already (a 512 x 512 map: 262 k per channel).
The activation decision keeps up to n scoring rows while they leave room for MIN_EVALS evaluations,
never fewer than MIN_ROWS, and stops its search for outlier groups after K evaluations counted as whole
forward passes (an upper bound: most start mid-graph on the cached prefix). WORK = 3e9 element-rows is
about a minute of ORT on 2 cores (measured at idle: PP-OCRv4 det at 640 x 640, E = 25.5 M, calibrates
2 rows/s). Models whose default fits the budget are untouched
(ResNets, PP-OCR cls); a 224 x 224 mobile classifier (E = 6.7 M) measures 445 rows instead of 512 and
keeps its 32 scoring rows with at most 13 evaluations; the 640 x 640 detector measures 117 rows and
scores on 9 rows, at most 13 evaluations (it took ~470 of 32 rows before). The rules are deterministic in
the model and the options, never in time or load.

A broken all-A8 plan (passes/act_precision.py) may screen BROKEN_EVALS x K evaluations further, accuracy
first. Where K sits at its floor -- the work buys fewer than MIN_EVALS_FLOOR evaluations of the scoring
rows, so even the gate and one screening set overrun it -- there is no such extension: 8 x the floor would
be 8 x an overrun (ISNet at 1024 x 1024 on 16 real photos, E = 167 M on 8 rows, K = 3 where the work
buys 2: 24 more evaluations, 11 x WORK, still screening after 20 min where the synthetic samples' decision,
not broken, took 102 s; BENCHMARKS.md, session 25). The joint check still rescues what the screen found.

A screen the cap cuts short (most groups left in sets it could not split) is run again on fewer rows,
which buy evaluations at the same work: the most rows whose cap covers what the first screen shows it
needs (`act_scoring.to_finish`), never fewer than MIN_ROWS,

    finishing rows     n_f = min(n_s, max(MIN_ROWS, WORK // (E * needed)))

(PP-OCRv5 mobile rec at 48 x 320, E = 6.3 M: 32 rows and 14 evaluations left 134 of 167 groups
undecided; its record asks for 50 evaluations, 9 rows buy 52; BENCHMARKS.md, session 24). A model whose
screen finishes is scored as before; where even MIN_ROWS rows cannot buy what it needs, no second screen.
"""

from __future__ import annotations

WORK = 3e9            # element-rows per stage (module docstring)
MIN_ROWS = 8          # fewest scoring rows of the activation decision (its even/odd halves need a few)
MIN_EVALS = 12        # evaluations the scoring rows should leave room for
MIN_EVALS_FLOOR = 3   # the gate's two evaluations and the first screening set, whatever the budget


def calibration_rows(samples: int, views: int, elements: int, work: float = WORK) -> int:
    """Rows Calibrate measures: views up to `views` per sample within `work`; all `samples` unless one
    row each overruns it, then the first `work // elements` of them, at least MIN_ROWS."""
    full = samples * max(views, 1)
    return int(min(full, max(min(samples, MIN_ROWS), work // max(elements, 1))))


def scoring_rows(samples: int, elements: int, work: float = WORK) -> int:
    """Rows the activation decision scores on (module docstring): at most `samples`."""
    return int(min(samples, max(MIN_ROWS, work // (max(elements, 1) * MIN_EVALS))))


def comparison_rows(samples: int, elements: int, work: float = WORK) -> int:
    """Rows the report's FP32-vs-quantized comparison runs (two forward passes each): at most `samples`,
    at least MIN_ROWS, within `work`."""
    return int(min(samples, max(MIN_ROWS, work // (2 * max(elements, 1)))))


def _bought(rows: int, elements: int, work: float) -> int:
    """Whole forward passes of `rows` the work pays for."""
    return int(work // (max(rows, 1) * max(elements, 1)))


def evaluations(rows: int, elements: int, work: float = WORK) -> int:
    """Evaluations (whole forward passes of `rows`) the activation decision may spend."""
    return max(MIN_EVALS_FLOOR, _bought(rows, elements, work))


def broken_evaluations(rows: int, elements: int, factor: int, work: float = WORK) -> int:
    """Screening evaluations a broken all-base plan may add (passes/act_precision.py): `factor` x the
    evaluations the work buys on `rows` where it buys at least MIN_EVALS_FLOOR -- `factor` x `evaluations`,
    as before -- and none where the cap sits at its floor (module docstring)."""
    bought = _bought(rows, elements, work)
    return factor * bought if bought >= MIN_EVALS_FLOOR else 0


def finishing_rows(rows: int, elements: int, needed: int, work: float = WORK) -> int:
    """The most scoring rows, at most `rows` and at least MIN_ROWS, whose evaluation cap (`evaluations`)
    covers `needed` evaluations (module docstring)."""
    return int(min(rows, max(MIN_ROWS, work // (max(elements, 1) * max(needed, 1)))))
