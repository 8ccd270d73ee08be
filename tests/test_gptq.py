"""GPTQ's rounding on the layers' input H (--gptq): the guard, the patches H is built from, and the probe's
slots = Emit's weights when the full H decides the low-bit integers."""

from __future__ import annotations

import numpy as np
import pytest
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.input_moments import MeasureInputMoments
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

from dfq_onnx.backends import forms
from dfq_onnx.core import hessian
from dfq_onnx.core.gptq import LaidHessian, row_errors


def _correlated(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * d, d)) @ rng.standard_normal((d, d)) * 0.5 + rng.standard_normal((4 * d, d))
    return (x.T @ x / len(x))[None]


@pytest.mark.parametrize("per_tensor", [False, True])
def test_guard_keeps_each_rows_error_at_or_below_nearest(per_tensor):
    h = _correlated(48)
    w = np.random.default_rng(1).standard_normal((48, 20)).astype(np.float32)      # MatMul [K, N]
    lh = LaidHessian(h, "matmul")
    s = np.float32(np.abs(w).max() / 7) if per_tensor else (np.abs(w).max(axis=0) / 7).astype(np.float32)
    q, scale, zero = lh.round(w, [s], None, -7, 7)
    nearest = np.clip(np.rint(w / s), -7, 7)
    e_gptq = row_errors(lh.rows(w), lh.rows(q * scale), h)
    e_rtn = row_errors(lh.rows(w), lh.rows(nearest * s), h)
    assert np.all(e_gptq <= e_rtn + 1e-12) and e_gptq.sum() < 0.9 * e_rtn.sum()
    assert q.dtype == np.int64 and np.all(np.abs(q) <= 7) and not np.any(zero)
    q2, _, _ = LaidHessian(h.copy(), "matmul").round(w, [s], None, -7, 7)
    np.testing.assert_array_equal(q, q2)                                          # deterministic


def test_dead_inputs_and_zero_hessian_round_to_nearest():
    w = np.random.default_rng(2).standard_normal((6, 4, 1, 1)).astype(np.float32)   # Conv [O, I, 1, 1]
    s = (np.abs(w).reshape(6, -1).max(axis=1) / 7).astype(np.float32)
    q, _, _ = LaidHessian(np.zeros((1, 4, 4)), "conv").round(w, [s], None, -7, 7)
    np.testing.assert_array_equal(q, np.clip(np.rint(w / s[:, None, None, None]), -7, 7))
    h = _correlated(4)
    h[:, 2, :], h[:, :, 2] = 0.0, 0.0                                             # input 2 never fires
    q, _, _ = LaidHessian(h, "conv").round(w, [s], None, -7, 7)
    assert np.all(np.isfinite(q)) and np.all(np.abs(q) <= 7)


def _conv_ref(x, w, stride, pad, groups):
    n, c, hh, ww = x.shape
    o, per, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (hh + 2 * pad - kh) // stride + 1, (ww + 2 * pad - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for oc in range(o):
        g = oc // (o // groups)
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * per:(g + 1) * per, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, oc, i, j] = np.sum(patch * w[oc], axis=(1, 2, 3))
    return y


def test_conv_rows_are_the_patches_each_weight_row_multiplies():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)                     # 2 groups
    rows = hessian.conv_rows(x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, samples=1)
    y = _conv_ref(x, w, 2, 1, 2)                                                  # [2, 6, 4, 3]
    assert rows.shape == (2, 2 * 12, 18)                                          # every position kept
    got = np.einsum("gpd,god->gpo", rows, w.reshape(2, 3, 18))                    # [G, n*P, O/G]
    want = y.reshape(2, 2, 3, 12).transpose(1, 0, 3, 2).reshape(2, 24, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert hessian.conv_rows(x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, samples=10 ** 6).shape[1] == 2


def test_dynamic_form_codes_lower_the_output_error():
    h = _correlated(32, seed=4)
    w = np.random.default_rng(5).standard_normal((32, 8)).astype(np.float32)
    lh = LaidHessian(h, "matmul")
    for imp, name in ((None, "plain"), (lh, "gptq")):
        q, s, z, _ = forms.dynamic_weight(w, 4, imp)
        err = row_errors(lh.rows(w), lh.rows((q - z) * s), h).sum()
        if name == "plain":
            plain = err
    assert err < plain


def _state(model):
    from _util import compile_state
    return compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate(),
                                 MeasureInputMoments(full=True)], calib_samples=24)


def test_layers_without_h_keep_nearest_rounding(monkeypatch):
    monkeypatch.setattr(hessian, "MAX_BYTES", 0)              # no layer's H fits: none measured
    state = _state(builders.GOOD_BUILDERS["conv_bn_relu_residual"]())
    assert state.input_moments == {}                          # not the diagonal clip search either
