"""Activation ranges from two contrasts of the line drawings, chosen per block of the graph at the output.

A recognizer's synthetic samples are the line drawings it reads most (synth/strokes.py), and the drawings
it reads most are the high-contrast ones: min/max over them is the range of an extreme contrast. Their
twins -- the same shapes, tint and noise with paper and ink drawn again from the prior -- give every
activation tensor a second min/max. Neither set serves every tensor of every model (PP-OCRv6 rec reads
word gaps better with the twins' stem ranges, PP-OCRv4 rec's deeper layers need the pick's; BENCHMARKS.md,
sessions 10 and 11). The contrast enters at the input, so the candidates are the prefixes of the graph
(the twins' ranges from the input down to some depth, the pick's below), chosen at the output:

    groups g_0, g_1, ... the activation groups in graph order; blocks of doubling size
        B_0 = {g_0}, B_1 = {g_1}, B_2 = {g_2, g_3}, ..., B_j = {g_(2^(j-1)), ..., g_(2^j - 1)}
        (fine near the input, coarse deeper: log2 K + 1 blocks for K groups); prefix P_j = B_0 u .. u B_j
    L(R) = [total, even rows, odd rows, drawing rows, twin rows] output loss against FP32 of the model
        with weights at the default bits and every switchable group at the default activation bits,
        ranges R (sensitivity/range_scoring.py), on the scoring rows: half drawings, half twins
    R_j = the pick's ranges with P_j's tensors at their twin ranges;  d_j = L(R_j) - L(R_pick)
    P_j qualifies if  d_total + |d_even - d_odd| / 2 < 0   (a gain beyond the spread of the two halves,
        as the sensitivity terms are shrunk)  and  d_drawings < 0  and  d_twins < 0  (it wins on both
        contrast populations: a range set that only fits the twins is the other extreme, not a better one)
    R <- the qualifying R_j of least total loss, else R_pick

A single block taken alone is not a candidate: the twins' ranges of a deep block under the pick's ranges
above it describe no contrast the model sees (on PP-OCRv4 rec such a block won on the scoring rows and
lost 2.6 points of line accuracy, session 10).

Cost: log2 K + 2 fixed models built and run once each on the scoring rows, plus one calibration pass
over the twins. Only samples that have twins take part (the line drawings, searched for no steps):
every other model, and a user's data, keep Calibrate's ranges untouched.
"""

from __future__ import annotations

import numpy as np

from dfq_onnx.backends.memory import release
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.sensitivity.range_scoring import RangeScorer

SOURCE = "synthetic/twin"


def blocks(n: int) -> list[range]:
    """Consecutive blocks of doubling size over n items: [0], [1], [2, 3], [4..7], ..."""
    out, start, size = [], 0, 1
    while start < n:
        out.append(range(start, min(start + size, n)))
        start += size
        size = max(size, start)
    return out


def better(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether loss `new` ([total, even, odd, subset...]) beats `old` by more than the halves' spread
    and on every subset of rows."""
    d = np.asarray(new, float) - np.asarray(old, float)
    return bool(d[0] + abs(d[1] - d[2]) / 2 < 0 and np.all(d[3:] < 0))


def twins_of(state: CompileState) -> dict | None:
    """The twin samples when this compile calibrated on synthetic line drawings that have them."""
    syn = getattr(state, "synthetic", None)
    if state.options.calib != "synthetic" or syn is None or not getattr(syn, "twin", None):
        return None
    return syn.twin


class ChooseTwinRanges(Pass):
    """The twins' ranges for the prefix of the graph the output prefers, if one beats the pick's."""

    name = "ChooseTwinRanges"

    def __init__(self, samples: int = 32, metric: str = "auto"):
        self.samples, self.metric = samples, metric

    def run(self, state: CompileState) -> PassResult:
        twin = twins_of(state)
        if twin is None or state.spec is None:
            return PassResult(False, "no twin samples (only line drawings have them)")
        groups = [ag for ag in state.act_groups
                  if any(state.ranges.get(t) is not None and state.ranges[t].source == "synthetic"
                         for t in ag.tensors)]
        if not groups:
            return PassResult(False, "no synthetic ranges")
        from dfq_onnx.passes.calibrate import collect_ranges, measured_rows

        tensors = [t for ag in groups for t in ag.tensors if state.ranges[t].source == "synthetic"]
        views, rows = measured_rows(state, twin, state.options.synth_views)
        alt = collect_ranges(state, twin, tensors, SOURCE, views, rows)
        scorer = self._scorer(state, twin)
        score = scorer.loss
        pick = dict(state.ranges)
        base = best = score(pick)
        current, trial, trace, kept = pick, dict(pick), [float(base[0])], None
        for j, block in enumerate(blocks(len(groups))):
            moved = {t: alt[t] for i in block for t in groups[i].tensors
                     if t in alt and (alt[t].lo, alt[t].hi) != (trial[t].lo, trial[t].hi)}
            if not moved:
                continue
            trial.update(moved)
            loss = score(trial)
            trace.append(float(loss[0]))
            if better(loss, base) and loss[0] < best[0]:
                current, best, kept = dict(trial), loss, j
        state.forward_passes += scorer.forward_passes
        del scorer
        release()
        state.ranges = current
        changed = sum(current[t] is alt.get(t) for t in tensors)
        state.report.notes["twin_ranges"] = {"groups": len(groups), "blocks": len(blocks(len(groups))),
                                             "prefix_blocks": 0 if kept is None else kept + 1,
                                             "losses": trace, "tensors": changed}
        where = "no prefix" if kept is None else f"prefix of {kept + 1} blocks"
        return PassResult(False, f"twin ranges kept for {changed} of {len(tensors)} tensors "
                                 f"({where}; loss {trace[0]:.4g} -> {float(best[0]):.4g})")

    def _scorer(self, state: CompileState, twin: dict):
        """L(R) of the module docstring: a function of the ranges R."""
        from dfq_onnx.passes.act_terms import budgeted

        calib = state.calib
        n = min(self.samples, len(next(iter(calib.values()))), len(next(iter(twin.values()))))
        _, _, _, batch, note = budgeted(state, {k: v[:n] for k, v in calib.items()}, None)
        rows = note.get("rows", n)
        half = rows // 2
        samples = {k: np.concatenate([np.asarray(calib[k][:rows - half]), twin[k][:half]]) for k in calib}
        populations = (np.arange(rows - half), np.arange(rows - half, rows))
        return RangeScorer(state.graph, state.spec, state.target, samples, self.metric, batch,
                           output_producers(state.graph), populations)
