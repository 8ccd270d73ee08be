"""Calibrate: npz validation, seeded noise, percentile vs min/max, dynamic dimensions."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders, recurrent_builders
from dfq_onnx.passes.calibrate import Calibrate, load_calib_npz
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

import dfq_onnx
from dfq_onnx.core.errors import PassError, UsageError


def _calibrate(model, **opts):
    return compile_state(model, [Normalize(), FoldBatchNorm(), FindQuantGroups(), Calibrate()], **opts)


@pytest.fixture
def graph():
    return compile_state(builders.conv_bn_relu(c_in=3, hw=8), [Normalize()]).graph


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((4, 3, 8, 8), np.float32)}, ["'input'", "found x"]),                 # wrong name
    ({"input": np.zeros((4, 3, 9, 9), np.float32)}, ["'input'", "[4, 3, 9, 9]"]),        # wrong shape
    ({"input": np.zeros((4, 3, 8), np.float32)}, ["'input'", "[4, 3, 8]"]),              # wrong rank
    ({"input": np.zeros((4, 3, 8, 8), np.int64)}, ["'input'", "int64"]),                 # wrong dtype
    ({"input": np.zeros((0, 3, 8, 8), np.float32)}, ["same number of samples", "'input' 0"]),
], ids=["missing-name", "wrong-shape", "wrong-rank", "wrong-dtype", "empty"])
def test_npz_validation_errors_name_the_array(graph, tmp_path, arrays, words):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError) as info:
        load_calib_npz(graph, str(path))
    for word in words:
        assert word in str(info.value)


def test_npz_error_through_the_api_is_a_usage_error(tmp_path):
    np.savez(tmp_path / "calib.npz", images=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(PassError) as info:
        dfq_onnx.quantize(builders.conv_bn_relu(), calib=str(tmp_path / "calib.npz"), progress=False)
    assert isinstance(info.value.cause, UsageError) and info.value.exit_code == 2
    assert "'input'" in str(info.value)


def _framed_lstm_npz(tmp_path, state_rows: int = 1):
    rng = np.random.default_rng(0)
    state = rng.standard_normal((state_rows, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", frames=rng.standard_normal((12, 64)).astype(np.float32), h=state,
             c=state)
    return str(tmp_path / "calib.npz"), state


def test_npz_array_of_one_sample_is_read_in_every_sample(tmp_path):
    """A recurrent state given once beside N frames (what a streaming model's caller feeds every
    stream: silero-vad's h / c [1, 1, 128] beside [T, 576] frames) is that state in every sample."""
    model = recurrent_builders.framed_lstm()
    path, state = _framed_lstm_npz(tmp_path)
    feeds = load_calib_npz(compile_state(model, [Normalize()]).graph, path)
    assert feeds["frames"].shape == (12, 64) and feeds["h"].shape == (12, 1, 16)
    assert all(np.array_equal(row, state[0]) for row in feeds["h"])
    out, _ = dfq_onnx.quantize(model, calib=path, progress=False)
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)


def test_npz_sample_counts_that_differ_are_named(tmp_path):
    path, _ = _framed_lstm_npz(tmp_path, state_rows=3)
    graph = compile_state(recurrent_builders.framed_lstm(), [Normalize()]).graph
    with pytest.raises(UsageError, match=r"'frames' 12, 'h' 3"):
        load_calib_npz(graph, path)


def test_npz_float64_is_accepted_as_float32(graph, tmp_path):
    np.savez(tmp_path / "calib.npz", input=np.ones((2, 3, 8, 8), np.float64))
    assert load_calib_npz(graph, str(tmp_path / "calib.npz"))["input"].dtype == np.float32


def test_noise_calibration_is_deterministic_by_seed():
    model = builders.conv_silu()
    a, b, c = (_calibrate(model, calib="noise", seed=s).ranges for s in (3, 3, 4))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_noise_calibration_counts_forward_passes():
    state = _calibrate(builders.conv_silu(), calib="noise", calib_samples=64, calib_batch=32)
    assert state.forward_passes == 2                  # 64 samples in batches of 32
    assert {r.source for r in state.ranges.values()} == {"noise"}


def test_percentile_is_narrower_than_minmax():
    model = builders.conv_silu()
    mm = _calibrate(model, calib="noise", calib_samples=128).ranges
    pc = _calibrate(model, calib="noise", calib_samples=128, act_range="percentile", percentile=99.9).ranges
    assert mm.keys() == pc.keys()
    for t in mm:
        assert mm[t].lo <= pc[t].lo and pc[t].hi <= mm[t].hi, t
    # N(0,1) input: the 0.1/99.9 % quantiles are ~ -+3.1, the extremes of 128*3*64 samples ~ -+4.3
    assert mm["input"].hi - pc["input"].hi > 0.5 and pc["input"].lo - mm["input"].lo > 0.5


def test_dynamic_spatial_dims_need_a_hint_for_noise_calibration():
    model = builders.conv_bn_relu(hw=None)
    with pytest.raises(PassError) as info:
        dfq_onnx.quantize(model, calib="noise", progress=False)
    assert isinstance(info.value.cause, UsageError) and info.value.exit_code == 2
    assert "--input-shape input:" in str(info.value) and "'input'" in str(info.value)
    _, report = dfq_onnx.quantize(model, calib="noise", input_shapes={"input": (1, 3, 8, 8)},
                                  progress=False, act_bits=8)   # no activation-precision scoring
    assert report.forward_passes == 1                 # 64 noise rows of a tiny model fit one chunk


def test_dynamic_dims_need_no_hint_when_all_ranges_are_analytic():
    out, report = dfq_onnx.quantize(builders.conv_bn_relu(hw=None), calib="analytic", progress=False)
    assert report.forward_passes == 0
