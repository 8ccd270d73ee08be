"""OutputProbabilitySpan: a graph-output Sigmoid / Softmax input range spans what the probability needs."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
from dfq_onnx.models import builders
from dfq_onnx.passes.probability_output import output_probability_inputs

import dfq_onnx

FAST = dict(use_cache=False, progress=False, latency_check=False)


def _encoding(model, tensor: str) -> tuple[float, float]:
    from onnx import numpy_helper
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    scale, zp = float(init[q.input[1]]), init[q.input[2]]
    low, high = (0, 255) if zp.dtype.kind == "u" else (-128, 127)
    return (low - int(zp)) * scale, (high - int(zp)) * scale


def _blocky(n: int = 64, seed: int = 3) -> np.ndarray:
    cells = np.random.default_rng(seed).uniform(-2, 2, (n, 3, 4, 4))
    return np.kron(cells, np.ones((1, 1, 4, 4))).astype(np.float32)


def test_finds_the_sigmoid_behind_layout_ops_only():
    g = gs.import_onnx(builders.sigmoid_map(hw=8))
    assert output_probability_inputs(g) == [("logit_up", "Sigmoid", 0)]
    g = gs.import_onnx(builders.conv_silu())             # a SiLU's Sigmoid feeds a Mul, not an output
    assert output_probability_inputs(g) == []


def test_probability_map_reaches_its_confident_values():
    """The synthetic samples' logits span [-2.97, 1.95]; blocky images reach [-4.5, 3.1]. Before, every
    pixel above p = sigmoid(1.95) = 0.875 read 0.875 (mean error 0.059 there, 0.020 below p = 0.049)."""
    model = builders.with_data_bn_stats(builders.sigmoid_map(hw=16))
    q, report = dfq_onnx.quantize(model, **FAST)
    span = math.log(255)
    lo, hi = _encoding(q, "logit_up")
    assert lo <= -span + 0.05 and hi >= span - 0.05
    assert "logit_up" in report.notes["probability_output_span"]
    x = _blocky()
    ref, out = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                .run(None, {"input": x})[0] for m in (model, q))
    high, low = ref > 1 / (1 + math.exp(-1.95)), ref < 1 / (1 + math.exp(2.97))
    assert high.sum() > 20 and low.sum() > 100
    assert np.abs(ref - out)[high].mean() < 0.03 and np.abs(ref - out)[low].mean() < 0.01


def test_real_calibration_keeps_its_measured_span(tmp_path):
    model = builders.with_data_bn_stats(builders.sigmoid_map(hw=16))
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_blocky(16, seed=9))
    q, report = dfq_onnx.quantize(model, calib=str(calib), **FAST)
    assert "probability_output_span" not in report.notes
    lo, hi = _encoding(q, "logit_up")
    assert hi < math.log(255) - 0.5


def test_softmax_classifier_top_reaches_its_confident_values():
    """Logits two BN-free layers past the last BN (ScoreTopPrior cannot reach them): the synthetic range
    [-1.89, 2.05] capped the top class; the top now reaches lo + ln(3 * 255). Mean |p_top - FP32's| on
    the 145 of 256 blocky images FP32 gives p_top > 0.8: 0.091 before, 0.050 now."""
    model = builders.with_data_bn_stats(builders.softmax_classifier(hw=16, gain=4.0))
    q, report = dfq_onnx.quantize(model, **FAST)
    moved = report.notes["probability_output_span"]["logits"]
    assert moved["op"] == "Softmax" and moved["to"][0] == moved["measured"][0]
    assert math.isclose(moved["to"][1] - moved["to"][0], math.log(3 * 255), rel_tol=1e-3)
    cells = np.random.default_rng(3).uniform(-2, 2, (256, 3, 4, 4))
    x = np.kron(cells, np.ones((1, 1, 4, 4))).astype(np.float32)
    ref, out = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                .run(None, {"input": x})[0] for m in (model, q))
    confident = ref.max(1) > 0.8
    assert confident.sum() > 100 and (out.argmax(1) == ref.argmax(1)).mean() > 0.95
    assert np.abs(out.max(1) - ref.max(1))[confident].mean() < 0.07
