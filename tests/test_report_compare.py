"""The report's FP32-vs-quantized comparison sums chunk by chunk: the same figures as on whole outputs."""

from __future__ import annotations

import numpy as np
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.backends import runtime
from dfq_onnx.core import ir
from dfq_onnx.report import data


def test_chunked_comparison_equals_the_whole_output_formula(monkeypatch):
    source = builders.conv_bn_relu_residual(c=8, hw=8, classes=10)
    model, report = dfq_onnx.quantize(source, calib="noise", progress=False, use_cache=False)
    feeds = {"input": np.random.default_rng(3).standard_normal((10, 8, 8, 8)).astype(np.float32)}
    state = type("S", (), {})()
    state.report = report
    state.report.notes["rows_per_call"] = {"calibrate": 3}            # 4 uneven chunks of 10 rows
    monkeypatch.setattr(data, "_samples", lambda st, src: (feeds, "test"))
    got = data.compare_outputs(state, ir.load_model(source), model)["outputs"][0]
    r = runtime.session(source).run(None, feeds)[0].astype(np.float64)
    q = runtime.session(model).run(None, feeds)[0].astype(np.float64)
    assert got["sqnr_db"] == round(10 * np.log10(np.sum(r * r) / np.sum((r - q) ** 2)), 4)
    assert got["max_abs_error"] == float(np.max(np.abs(r - q)))
    assert got["top1_agreement"] == float(np.mean(r.argmax(1) == q.argmax(1)))
    assert got["shape"] == [10, 10]
