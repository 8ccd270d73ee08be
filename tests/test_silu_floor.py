"""SiluRangeFloor: a SiLU input's range bottom rises to where Sigmoid and Mul are flat."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _util import compile_state, run, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.silu_floor import SiluRangeFloor, floor_for, silu_pairs

from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.state import Range


def _state(model):
    return compile_state(model, [Normalize(13), FoldBatchNorm(), FindQuantGroups(), Calibrate()],
                         calib="noise")


@pytest.mark.parametrize("d_s, d_y", [(1 / 255, 0.2), (1 / 255, 1e-3), (0.01, 5.0)])
def test_the_floor_moves_each_reader_by_less_than_half_its_step(d_s, d_y):
    t = floor_for(d_s, d_y)
    sig = 1 / (1 + math.exp(-t))
    assert t < -1.27 and sig <= d_s / 2 + 1e-12 and abs(t * sig) <= d_y / 2 + 1e-12
    xs = np.linspace(t - 200, t, 2001)                      # every x below the floor
    s = 1 / (1 + np.exp(-xs))
    assert np.all(np.abs(xs * s - t * sig) <= d_y / 2 + 1e-9) and np.all(sig - s <= d_s / 2 + 1e-12)


def test_a_deep_silu_input_range_is_floored_and_only_it():
    state = _state(builders.conv_silu())
    assert silu_pairs(state.graph) == [("conv1_out", "sig_out", "silu_out")]
    state.ranges["conv1_out"] = Range(-300.0, 10.0, "test")
    before = dict(state.ranges)
    SiluRangeFloor().run(state)
    lo = state.ranges["conv1_out"].lo
    assert -20 < lo < -1.27 and state.ranges["conv1_out"].hi == 10.0
    assert {k: v for k, v in state.ranges.items() if k != "conv1_out"} == \
        {k: v for k, v in before.items() if k != "conv1_out"}
    assert "conv1_out" in state.report.notes["silu_floor"]
    again = state.ranges["conv1_out"]
    SiluRangeFloor().run(state)                            # a second run moves nothing
    assert state.ranges["conv1_out"] == again


def test_a_tensor_with_another_reader_is_not_floored():
    state = _state(builders.conv_silu(tail=True))        # tail: Sigmoid -> Mul by a constant, not a SiLU
    assert [p[0] for p in silu_pairs(state.graph)] == ["conv1_out"]
    state.ranges["conv2_out"] = Range(-300.0, 10.0, "test")
    SiluRangeFloor().run(state)
    assert state.ranges["conv2_out"].lo == -300.0


def test_the_floor_brings_the_integer_output_closer_to_fp32():
    """A SiLU input whose calibrated range reaches far down (one outlier row): the A8 output with the
    floor is closer to FP32 in ORT than without (its grid is finer where the values are)."""
    model = builders.conv_silu(c=8, hw=8)
    feeds = {"input": np.random.default_rng(3).standard_normal((16, 3, 8, 8)).astype(np.float32)}
    ref = run(model, feeds)[0]
    err = {}
    for floored in (False, True):
        state = _state(model)
        r = state.ranges["conv1_out"]
        state.ranges["conv1_out"] = Range(-40 * max(r.hi, 1.0), r.hi, "test")
        passes = ([SiluRangeFloor()] if floored else []) + [UniformPlan(), EmitQDQ()]
        run_passes(passes, state)
        err[floored] = float(np.mean((run(state_model(state), feeds)[0] - ref) ** 2))
    assert err[True] < err[False] / 4, err
