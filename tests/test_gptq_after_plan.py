"""The default pipeline's GPTQ for a mixed plan's weights below 8 bits: applied after the plan, so the
sensitivity table and the allocator see round-to-nearest weights (the synthetic samples' H overstates
GPTQ's gains), on H with only the per-channel structure the samples are made to match; Emit writes GPTQ's
integers for the planned low-bit layers only."""

from __future__ import annotations

import numpy as np
import pytest
from _util import initializers
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.core import hessian
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.target import load_target
from dfq_onnx.pipeline import default_pipeline


def _compile(tmp_path, **options):
    model = builders.conv_bn_relu_residual()
    return dfq_onnx.quantize(model, avg_weight_bits=5.0, score_bits=(2, 4, 8), progress=False,
                             cache_dir=str(tmp_path), **options)


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v for k, v in initializers(model).items() if k.endswith("_quantized")}


def test_default_plan_is_nearest_roundings_and_its_low_bit_weights_are_gptqs(tmp_path):
    rtn, rtn_report = _compile(tmp_path, gptq=False)
    out, report = _compile(tmp_path)
    bits = {row["weight"]: row["weight_bits"] for row in report.layers}
    assert bits == {row["weight"]: row["weight_bits"] for row in rtn_report.layers}
    assert report.notes["sensitivity"]["cache_hit"]           # the same table: its key has no GPTQ
    alloc = report.notes["allocation"]
    assert alloc["measured_loss_round_to_nearest"] == rtn_report.notes["allocation"]["measured_loss"]
    assert alloc["measured_loss"] != alloc["measured_loss_round_to_nearest"]
    mine, theirs = _weights(out), _weights(rtn)
    assert mine.keys() == theirs.keys()
    low = [w + "_quantized" for w, b in bits.items() if b < 8]
    assert low and all(not np.array_equal(mine[k], theirs[k]) for k in low)
    eight = [w + "_quantized" for w, b in bits.items() if b == 8]
    assert all(np.array_equal(mine[k], theirs[k]) for k in eight)


def test_gptq_flag_and_weight_clip_keep_their_place_before_the_table():
    target = load_target("ort-cpu")
    names = lambda **o: [p.name for p in default_pipeline(target, QuantizeOptions(**o))]  # noqa: E731
    mixed = names(avg_weight_bits=5.0)
    assert mixed.index("MeasureInputMoments") > mixed.index("AllocateBits")
    scored = names(avg_weight_bits=5.0, gptq=True)
    assert scored.index("MeasureInputMoments") < scored.index("ScoreSensitivity")
    assert "MeasureInputMoments" not in names(avg_weight_bits=5.0, gptq=False)
    assert "MeasureInputMoments" not in names()                  # W8 weights never read H
    assert "MeasureInputMoments" not in names(weight_bits=4)      # uniform low bits: round-to-nearest
    uniform = names(weight_bits=4, gptq=True)
    assert uniform.index("MeasureInputMoments") < uniform.index("UniformPlan")


def test_channel_trusted_keeps_each_channels_block_and_puts_the_means_product_across():
    rng = np.random.default_rng(0)
    taps, channels = 4, 3
    x = rng.standard_normal((500, channels * taps)) @ rng.standard_normal((channels * taps,) * 2) + 0.7
    h, mu = (x.T @ x / len(x))[None], x.mean(axis=0)[None]
    out = hessian.channel_trusted(h, mu, taps)
    for i in range(channels * taps):
        for j in range(channels * taps):
            want = h[0, i, j] if i // taps == j // taps else mu[0, i] * mu[0, j]
            assert out[0, i, j] == want
    assert np.linalg.eigvalsh(out[0]).min() > -1e-9           # blockdiag(Cov) + mu mu^T
    np.testing.assert_array_equal(hessian.channel_trusted(h, mu, channels * taps), h)
    with pytest.raises(ValueError, match="taps"):
        hessian.channel_trusted(h, mu, 5)


def test_accumulator_keeps_the_rows_mean():
    rows = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    acc = hessian.Accumulator()
    acc.add(rows[:, :2])
    acc.add(rows[:, 2:])
    np.testing.assert_allclose(acc.row_mean(), rows.mean(axis=1))
    np.testing.assert_allclose(acc.mean(), np.matmul(rows.transpose(0, 2, 1), rows) / 3)
