"""Twin ranges (passes/twin_ranges.py, sensitivity/range_scoring.py): blocks, the acceptance rule, the
range scorer on a builder recognizer, the prefix choice, and the pass leaving models without twins alone."""

import dataclasses
from types import SimpleNamespace

import numpy as np
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.twin_ranges import SOURCE, ChooseTwinRanges, better, blocks

from dfq_onnx.sensitivity.range_scoring import RangeScorer


def _state():
    return compile_state(builders.conv_sequence(w=16), [Normalize(21), FoldBatchNorm(), FindQuantGroups(),
                                                        Calibrate()], calib="noise", calib_samples=8)


def test_blocks_double_and_cover():
    assert [list(b) for b in blocks(7)] == [[0], [1], [2, 3], [4, 5, 6]]
    assert sum(len(b) for b in blocks(122)) == 122 and len(blocks(122)) == 8
    assert blocks(0) == []


def test_better_needs_a_gain_beyond_the_halves():
    assert better([0.8, 0.8, 0.8], [1.0, 1.0, 1.0])
    assert not better([0.9, 0.5, 1.3], [1.0, 1.0, 1.0])     # gain 0.1, spread 0.4
    assert not better([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert better([0.8, 0.8, 0.8, 0.9, 0.7], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert not better([0.8, 0.8, 0.8, 1.1, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0])   # the drawings lose


def test_range_scorer_sees_clipped_ranges():
    state = _state()
    scorer = RangeScorer(state.graph, state.spec, state.target, state.calib, "auto")
    ok = scorer.loss(state.ranges)
    clipped = {t: dataclasses.replace(r, lo=r.lo / 8, hi=r.hi / 8) for t, r in state.ranges.items()}
    assert scorer.loss(clipped)[0] > ok[0] >= 0.0
    np.testing.assert_array_equal(scorer.loss(state.ranges), ok)       # deterministic


def test_pass_without_twins_keeps_ranges():
    state = _state()
    before = dict(state.ranges)
    assert "no twin samples" in ChooseTwinRanges().run(state).summary
    assert state.ranges == before


def _twin_state():
    """The builder recognizer as if calibrated on drawings whose twins have half their contrast."""
    state = _state()
    state.options = dataclasses.replace(state.options, calib="synthetic")
    state.ranges = {t: dataclasses.replace(r, source="synthetic") for t, r in state.ranges.items()}
    state.synthetic = SimpleNamespace(twin={k: v * 0.5 for k, v in state.calib.items()})
    return state


def _choose(state, gains: dict, monkeypatch):
    """Run the pass with L(R) = 1 - sum of gains[t] (per [total, even, odd, drawings, twins]) over the
    tensors R gives twin ranges."""
    def loss(ranges):
        return 1.0 - sum((np.array(g, float) for t, g in gains.items() if ranges[t].source == SOURCE),
                         np.zeros(5))
    monkeypatch.setattr(ChooseTwinRanges, "_scorer", lambda self, st, tw: SimpleNamespace(
        loss=loss, forward_passes=0))
    ChooseTwinRanges().run(state)
    return {t for t, r in state.ranges.items() if r.source == SOURCE}


def test_a_prefix_from_the_input_is_kept_where_it_wins(monkeypatch):
    state = _twin_state()
    kept = _choose(state, {"input": [0.1] * 5, "relu1_out": [-0.2] * 5}, monkeypatch)
    assert kept == {"input"}
    assert state.report.notes["twin_ranges"]["prefix_blocks"] == 1


def test_a_deep_block_alone_is_no_candidate(monkeypatch):
    # the deep group's twin ranges lower the loss alone, but not under the pick's input range
    state = _twin_state()
    before = dict(state.ranges)
    assert _choose(state, {"input": [-0.2] * 5, "relu1_out": [0.1] * 5}, monkeypatch) == set()
    assert state.ranges == before


def test_a_prefix_that_only_fits_the_twins_is_not_kept(monkeypatch):
    state = _twin_state()
    assert _choose(state, {"input": [0.1, 0.1, 0.1, -0.05, 0.25]}, monkeypatch) == set()
