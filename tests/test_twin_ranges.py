"""Twin ranges (passes/twin_ranges.py, sensitivity/range_scoring.py): blocks, the acceptance rule, the
range scorer on a builder recognizer, and the pass leaving models without twins alone."""

import dataclasses

import numpy as np
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.twin_ranges import ChooseTwinRanges, better, blocks

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
