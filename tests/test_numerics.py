"""dfq_onnx.core.numerics: pure numpy, tested without onnx or onnxruntime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfq_onnx.core import numerics as nx


def test_numerics_and_moments_import_neither_onnx_nor_onnxruntime():
    code = ("import sys, dfq_onnx.core.numerics, dfq_onnx.core.moments; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnx_graphsurgeon') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("bits, signed, narrow, expected", [
    (8, True, False, (-128, 127)),
    (8, True, True, (-127, 127)),
    (8, False, False, (0, 255)),
    (4, True, False, (-8, 7)),
    (4, True, True, (-7, 7)),     # int4 narrow: symmetric grid around 0
    (4, False, False, (0, 15)),
    (16, False, False, (0, 65535)),
    (2, True, True, (-1, 1)),
])
def test_qrange(bits, signed, narrow, expected):
    assert nx.qrange(bits, signed, narrow) == expected


def test_affine_params_widen_range_to_contain_zero():
    scale, zp = nx.affine_params(0.5, 2.0, 8, signed=False)   # widened to [0, 2]
    assert zp == 0 and scale == pytest.approx(2.0 / 255, rel=1e-6)
    scale, zp = nx.affine_params(-2.0, -0.5, 8, signed=False)  # widened to [-2, 0]
    assert zp == 255 and scale == pytest.approx(2.0 / 255, rel=1e-6)


@pytest.mark.parametrize("signed", [False, True])
def test_affine_params_degenerate_range_gets_scale_one(signed):
    scale, zp = nx.affine_params(0.0, 0.0, 8, signed)
    assert scale == np.float32(1.0) and zp == 0
    # a range so narrow its float32 step underflows (a random-init MobileViT's ~1e-40 tensor):
    # ZeroDivisionError in EmitQDQ before
    scale, zp = nx.affine_params(-1e-40, 1e-40, 8, signed)
    assert scale == np.float32(1.0) and zp == 0


@given(lo=st.floats(-100, 0), hi=st.floats(0, 100), bits=st.sampled_from([4, 8, 16]), signed=st.booleans())
@settings(max_examples=200, deadline=None)
def test_affine_zero_is_exact_and_range_within_half_step(lo, hi, bits, signed):
    if hi - lo < 1e-3:
        return
    scale, zp = nx.affine_params(lo, hi, bits, signed)
    qmin, qmax = nx.qrange(bits, signed)
    assert qmin <= zp <= qmax and isinstance(zp, int)
    assert nx.fake_quant(np.zeros(1, np.float32), scale, zp, bits, signed)[0] == 0.0
    xs = np.linspace(lo, hi, 257, dtype=np.float32)
    err = np.abs(nx.fake_quant(xs, scale, zp, bits, signed) - xs)
    assert err.max() <= scale / 2 + 1e-6 * max(abs(lo), hi)   # inside the range: rounding error only


def test_symmetric_zero_point_is_exactly_zero():
    scale, zp = nx.symmetric_act_params(-1.0, 3.0, 8, signed=True)
    assert zp == 0 and type(zp) is int
    assert scale == pytest.approx(3.0 / 127, rel=1e-6)     # narrow signed grid over [-3, 3]
    scale, zp = nx.symmetric_act_params(0.0, 2.55, 8, signed=False)
    assert zp == 0 and scale == pytest.approx(0.01, rel=1e-6)


def test_weight_scales_per_channel_and_zero_channel():
    w = np.array([[1.27, -0.5], [0.0, 0.0], [-2.54, 1.0]], np.float32)
    np.testing.assert_allclose(nx.weight_scales(w, 8, axis=0), [0.01, 1.0, 0.02], rtol=1e-6)
    assert nx.weight_scales(w, 8, axis=None) == pytest.approx(0.02, rel=1e-6)
    np.testing.assert_allclose(nx.weight_scales(w, 4, axis=0), [1.27 / 7, 1.0, 2.54 / 7], rtol=1e-6)


def test_quantize_rounds_half_to_even_before_adding_zero_point():
    # ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999], np.float32)
    np.testing.assert_array_equal(nx.quantize(x, 1.0, 0, 8, True), [0, 2, 2, 0, -2, -2, 2])
    np.testing.assert_array_equal(nx.quantize(np.array([2.5], np.float32), 1.0, 10, 8, False), [12])
    np.testing.assert_array_equal(nx.quantize(np.array([1000.0, -1000.0], np.float32), 1.0, 128, 8, False),
                                  [255, 0])
    np.testing.assert_array_equal(nx.quantize(np.array([-1000.0], np.float32), 1.0, 0, 8, True, narrow=True),
                                  [-127])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_quantize_saturates_huge_values_like_onnx():
    x = np.array([1e30, np.inf, -1e30], np.float32)
    np.testing.assert_array_equal(nx.quantize(x, 1.0, 0, 8, True), [127, 127, -128])


def test_quantize_per_channel_axis():
    x = np.ones((2, 3), np.float32)
    q = nx.quantize(x, np.array([0.5, 0.25, 1.0], np.float32), np.zeros(3, np.int64), 8, True, axis=1)
    np.testing.assert_array_equal(q, [[2, 4, 1], [2, 4, 1]])
    np.testing.assert_allclose(nx.dequantize(q, np.array([0.5, 0.25, 1.0]), np.zeros(3), axis=1), x)


def test_fold_bn_matches_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6))
    gamma, beta, mean = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4)
    var, eps = rng.uniform(0.1, 2, 4), 1e-3
    for axis, w, b in ((0, rng.standard_normal((4, 6)), rng.normal(size=4)),   # Conv / Gemm transB=1
                       (1, rng.standard_normal((6, 4)), None)):                  # Gemm transB=0, no bias
        z = x @ (w.T if axis == 0 else w) + (0.0 if b is None else b)
        direct = gamma * (z - mean) / np.sqrt(var + eps) + beta
        w2, b2 = nx.fold_bn(w, b, gamma, beta, mean, var, eps, out_axis=axis)
        assert w2.dtype == np.float32 and b2.dtype == np.float32
        folded = x @ (w2.T if axis == 0 else w2).astype(np.float64) + b2
        np.testing.assert_allclose(folded, direct, rtol=1e-5, atol=1e-5)


def test_bias_int32():
    q, scale = nx.bias_int32(np.array([1.0, -2.0, 0.0]), 0.1, np.array([0.01, 0.02, 0.0]))
    np.testing.assert_allclose(scale, [0.001, 0.002, 1.0], rtol=1e-6)   # zero scale -> 1
    np.testing.assert_array_equal(q, [1000, -1000, 0])
    assert q.dtype == np.int32 and scale.dtype == np.float32
    q, _ = nx.bias_int32(np.array([1e12, -1e12]), 1.0, np.array([1.0, 1.0]))
    np.testing.assert_array_equal(q, [2**31 - 1, -(2**31)])


def test_sqnr_and_kl():
    ref = np.random.default_rng(0).standard_normal(1000)
    assert nx.sqnr_db(ref, ref) == float("inf")
    assert nx.sqnr_db(ref, ref * 1.01) == pytest.approx(40.0, abs=1e-9)   # noise = 1e-4 * signal
    assert nx.sqnr_db(np.zeros(3), np.ones(3)) == float("-inf")
    assert nx.kl_softmax(ref.reshape(10, 100), ref.reshape(10, 100)) == pytest.approx(0.0, abs=1e-12)
    # p = [.5, .5], q = [.25, .75]: KL = .5 ln 2 + .5 ln(2/3)
    expected = 0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0)
    assert nx.kl_softmax(np.array([[0.0, 0.0]]), np.array([[0.0, np.log(3.0)]])) == pytest.approx(expected)


@pytest.mark.parametrize("mu, sigma", [(0.0, 1.0), (-1.0, 0.5), (2.0, 3.0), (-3.0, 1.0)])
def test_relu_normal_moments_vs_monte_carlo(mu, sigma):
    x = np.maximum(np.random.default_rng(0).normal(mu, sigma, 400_000), 0.0)
    mean, std = nx.relu_normal_moments(np.array([mu]), np.array([sigma]))
    # Monte-Carlo standard error of the mean is sigma / sqrt(4e5) ~ 1.6e-3 sigma; allow ~6 of them.
    assert mean[0] == pytest.approx(x.mean(), abs=0.01 * sigma)
    assert std[0] == pytest.approx(x.std(), abs=0.01 * sigma)


@pytest.mark.parametrize("call", [
    lambda: nx.qrange(9, True),
    lambda: nx.qrange(8, False, narrow=True),
    lambda: nx.affine_params(float("nan"), 1.0, 8, False),
    lambda: nx.affine_params(2.0, 1.0, 8, False),
    lambda: nx.affine_params(0.0, float("inf"), 8, False),
    lambda: nx.symmetric_scale(-1.0, 8),
    lambda: nx.symmetric_scale(np.array([1.0, np.inf]), 8),
    lambda: nx.symmetric_act_params(-1.0, 1.0, 8, signed=False),
    lambda: nx.fold_bn(np.ones((2, 2)), None, np.ones(2), np.zeros(2), np.zeros(2), np.array([-1.0, 1]), 0.0),
])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_row_blocks_give_the_same_result_as_one_call(monkeypatch):
    # quantize / fold_bn work in blocks of rows on large tensors (bounded float64 temporaries)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    per_ch = nx.weight_scales(w, 8, 0)
    g, b, m, v = (rng.uniform(0.5, 1.5, 6) for _ in range(4))
    for axis, scale in ((0, per_ch), (None, np.float32(0.02)), (1, nx.weight_scales(w, 8, 1))):
        want = nx.quantize(w, scale, 0, 8, True, axis)
        want_w, want_b = nx.fold_bn(w, None, g, b, m, v, 1e-5, 0)
        monkeypatch.setattr(nx, "CHUNK", 40)         # 1 row of 45 elements per block
        np.testing.assert_array_equal(nx.quantize(w, scale, 0, 8, True, axis), want)
        got_w, got_b = nx.fold_bn(w, None, g, b, m, v, 1e-5, 0)
        np.testing.assert_array_equal(got_w, want_w)
        np.testing.assert_array_equal(got_b, want_b)
        monkeypatch.undo()
