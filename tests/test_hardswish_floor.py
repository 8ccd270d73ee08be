"""HardSwishRangeFloor: a hard-swish input's range bottom rises to where every reader gives exactly 0."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state, run, state_model
from dfq_onnx.models import exported
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.hardswish_floor import HardSwishRangeFloor, hardswish_floors
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.quant_groups import FindQuantGroups

from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.state import Range


def _state(model):
    return compile_state(model, [Normalize(17), FoldBatchNorm(), FindQuantGroups(), Calibrate()],
                         calib="noise")


@pytest.mark.parametrize("form, floor", [("clip", -3.0), ("relu", -3.0), ("hardsigmoid", -2.5), ("op", -3.0)])
def test_each_spelling_of_hard_swish_is_found_with_its_floor(form, floor):
    state = _state(exported.conv_hardswish(form))
    assert hardswish_floors(state.graph) == [("x", pytest.approx(floor))]
    state.ranges["x"] = Range(-40.0, 9.0, "test")
    before = dict(state.ranges)
    HardSwishRangeFloor().run(state)
    assert state.ranges["x"].lo == pytest.approx(floor) and state.ranges["x"].hi == 9.0
    others = {k: v for k, v in state.ranges.items() if k != "x"}
    assert others == {k: v for k, v in before.items() if k != "x"}
    assert state.report.notes["hardswish_floor"] == {"x": [-40.0, round(floor, 4)]}


@pytest.mark.parametrize("model", [exported.conv_hardswish("clip", extra_reader=True),
                                   exported.conv_hardswish("clip", low=-1.0)])
def test_no_floor_where_a_reader_is_not_flat_below(model):
    """x also read elsewhere, or a Clip whose bottom is not 0: values below -3 still matter."""
    state = _state(model)
    assert hardswish_floors(state.graph) == []
    state.ranges["x"] = Range(-40.0, 9.0, "test")
    HardSwishRangeFloor().run(state)
    assert state.ranges["x"].lo == -40.0


def test_the_floor_is_exact_and_brings_the_integer_output_closer_to_fp32():
    """x's calibrated range reaching far down: the A8 model with the floor is closer to FP32 in ORT,
    and clipping x at the floor in float changes nothing (every reader gives 0 below it)."""
    model = exported.conv_hardswish("clip")
    x = np.random.default_rng(3).standard_normal((16, 3, 8, 8)).astype(np.float32)
    ref = run(model, {"input": x})[0]
    err = {}
    for floored in (False, True):
        state = _state(model)
        state.ranges["x"] = Range(-60.0, state.ranges["x"].hi, "test")
        run_passes(([HardSwishRangeFloor()] if floored else []) + [UniformPlan(), EmitQDQ()], state)
        err[floored] = float(np.mean((run(state_model(state), {"input": x})[0] - ref) ** 2))
    assert err[True] < err[False] / 2, err
    hs = lambda v: v * np.clip(v + 3, 0, 6) / 6               # noqa: E731
    v = np.linspace(-60, 5, 1001)
    np.testing.assert_array_equal(hs(np.maximum(v, -3.0)), hs(v))
