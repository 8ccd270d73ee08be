"""Activation ranges from two contrasts of the line drawings, chosen per block of the graph at the output.

A recognizer's synthetic samples are the line drawings it reads most (synth/strokes.py), and the drawings
it reads most are the high-contrast ones: min/max over them is the range of an extreme contrast. Their
twins -- the same shapes, tint and noise with paper and ink drawn again from the prior -- give every
activation tensor a second min/max. Neither set serves every tensor of every model (PP-OCRv6 rec reads
word gaps better with the twins' stem ranges, PP-OCRv4 rec's deeper layers need the pick's; BENCHMARKS.md,
session 10), so the choice is made at the output, a block of tensors at a time:

    groups g_0, g_1, ... the activation groups in graph order; blocks of doubling size
        B_0 = {g_0}, B_1 = {g_1}, B_2 = {g_2, g_3}, ..., B_j = {g_(2^(j-1)), ..., g_(2^j - 1)}
        (fine near the input, where the contrast enters, coarse deeper: log2 K + 1 blocks for K groups)
    L(R) = [total, even rows, odd rows] output loss against FP32 of the model with weights at the
        default bits and every switchable group at the default activation bits, ranges R
        (sensitivity/range_scoring.py), on the scoring rows: half drawings, half twins
    R <- R_pick;  for B_0, B_1, ...:  R' = R with B_j's tensors at their twin ranges;
        keep R' if  d = L(R') - L(R)  has  d_total + |d_even - d_odd| / 2 < 0
        (a gain beyond the spread of the two halves, as the sensitivity terms are shrunk)

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
    """Whether loss `new` ([total, even, odd]) beats `old` by more than the halves' spread."""
    d = np.asarray(new, float) - np.asarray(old, float)
    return bool(d[0] + abs(d[1] - d[2]) / 2 < 0)


def twins_of(state: CompileState) -> dict | None:
    """The twin samples when this compile calibrated on synthetic line drawings that have them."""
    syn = getattr(state, "synthetic", None)
    if state.options.calib != "synthetic" or syn is None or not getattr(syn, "twin", None):
        return None
    return syn.twin


class ChooseTwinRanges(Pass):
    """Per block of activation groups: the pick's or the twins' ranges, whichever the output prefers."""

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
        current = dict(state.ranges)
        best = score(current)
        trace, kept = [float(best[0])], []
        for j, block in enumerate(blocks(len(groups))):
            trial = dict(current)
            trial.update({t: alt[t] for i in block for t in groups[i].tensors if t in alt})
            loss = score(trial)
            trace.append(float(loss[0]))
            if better(loss, best):
                current, best = trial, loss
                kept.append(j)
        state.forward_passes += scorer.forward_passes
        del scorer
        release()
        state.ranges = current
        changed = sum(current[t] is alt.get(t) for t in tensors)
        state.report.notes["twin_ranges"] = {"groups": len(groups), "blocks": len(blocks(len(groups))),
                                             "kept_blocks": kept, "losses": trace, "tensors": changed}
        return PassResult(False, f"twin ranges kept for {changed} of {len(tensors)} tensors "
                                 f"(blocks {kept}; loss {trace[0]:.4g} -> {float(best[0]):.4g})")

    def _scorer(self, state: CompileState, twin: dict):
        """L(R) of the module docstring: a function of the ranges R."""
        from dfq_onnx.passes.act_precision import budgeted

        calib = state.calib
        n = min(self.samples, len(next(iter(calib.values()))), len(next(iter(twin.values()))))
        _, _, _, batch, note = budgeted(state, {k: v[:n] for k, v in calib.items()}, None)
        rows = note.get("rows", n)
        half = rows // 2
        samples = {k: np.concatenate([np.asarray(calib[k][:rows - half]), twin[k][:half]]) for k in calib}
        return RangeScorer(state.graph, state.spec, state.target, samples, self.metric, batch,
                           output_producers(state.graph))
