"""AnalyticRanges: data-free ranges from BN statistics, compared with ranges measured on N(0, 1) inputs."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state, normal_feeds
from dfq_onnx.models import builders
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

import dfq_onnx

FRONT = [Normalize(), FoldBatchNorm(), FindQuantGroups()]
BN_BUILDERS = [
    "conv_bn_relu", "conv_bn_relu_residual", "gemm_bn", "matmul_bn", "concat_branches", "conv_clip6"]


def _analytic_and_measured(model, tmp_path, n=256):
    analytic = compile_state(model, [*FRONT, AnalyticRanges()]).ranges
    np.savez(tmp_path / "data.npz", **normal_feeds(model, n=n, seed=5))
    measured = compile_state(model, [*FRONT, Calibrate()], calib=str(tmp_path / "data.npz")).ranges
    return analytic, measured


@pytest.mark.parametrize("name", ["conv_bn_relu", "concat_branches", "conv_clip6", "gemm_bn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_analytic_ranges_within_sensible_factor_of_measured(name, seed, tmp_path):
    # The BN statistics are refitted to the model's own activations on N(0, 1) inputs, as training
    # would leave them. Analytic ranges clip at the MSE-optimal k for Laplace tails (6.99 sigma at 8
    # bits; 3.92 for the Gaussian inputs), measured ones are the min/max of 256 samples of Gaussian
    # data (whose max over ~2k values is ~3.5 sigma), so analytic ranges run up to ~2.5x wider on
    # purpose; below 0.5x would mean clipping real signal. Bound: [0.5, 3].
    model = builders.with_data_bn_stats(builders.GOOD_BUILDERS[name](seed=seed), n=256, seed=10)
    analytic, measured = _analytic_and_measured(model, tmp_path)
    assert analytic.keys() == measured.keys()
    for t, m in measured.items():
        a = analytic[t]
        assert a.source == "analytic"
        ratio = (a.hi - a.lo) / (m.hi - m.lo)
        assert 0.5 <= ratio <= 3.0, (
            f"{t}: analytic [{a.lo:.2f}, {a.hi:.2f}], measured [{m.lo:.2f}, {m.hi:.2f}]")


@pytest.mark.parametrize("name", BN_BUILDERS)
def test_no_tensor_left_without_an_analytic_range(name):
    out, report = dfq_onnx.quantize(builders.GOOD_BUILDERS[name](), calib="analytic", progress=False)
    notes = report.notes["analytic_ranges"]
    assert notes["tensors"] == notes["of"] > 0
    assert report.forward_passes == 0          # nothing left for Calibrate to measure


def test_relu_output_range_starts_at_zero():
    state = compile_state(builders.conv_bn_relu(), [*FRONT, AnalyticRanges()])
    assert state.ranges["relu1_out"].lo == 0.0 and state.ranges["relu1_out"].hi > 0.0


def test_silu_range_matches_measured(tmp_path):
    analytic, measured = _analytic_and_measured(builders.conv_silu(), tmp_path)
    a, m = analytic["silu_out"], measured["silu_out"]
    assert a.lo >= -0.3                       # min of x * sigmoid(x) is -0.2785
    assert a.hi >= 0.7 * m.hi


@pytest.mark.parametrize("hw", [1, 2, 3, 8])
def test_conv_on_a_map_smaller_than_its_kernel_counts_only_taps_that_read_data(hw, tmp_path):
    # Found by random-graph fuzzing: a 3x3 conv (pad 1) on a 1x1 map reads only its centre tap;
    # summing all 9 taps' variance made the range several times too wide (~200x in the fuzzed graph,
    # whose centre tap was small) and the 8-bit output all zero. conv2 here has no BN after it.
    model = builders.with_data_bn_stats(builders.conv_bn_relu(hw=hw, seed=3), n=256, seed=10)
    analytic, measured = _analytic_and_measured(model, tmp_path, n=512)
    assert "output" in measured
    for t, m in measured.items():
        a = analytic[t]
        ratio = (a.hi - a.lo) / (m.hi - m.lo)
        assert 0.5 <= ratio <= 3.0, (hw, t, a, m)
