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


def test_a_static_batch_that_does_not_divide_the_samples(tmp_path):
    """A graph exported with a fixed batch of 3 (CenterFace ships [10, 3, 32, 32]): the comparison pads the
    last call and drops its rows, as calibration does, instead of failing the compile after its passes."""
    source = builders.conv_bn_relu_residual(c=8, hw=8, classes=10)
    source.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    source.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 3
    model, report = dfq_onnx.quantize(source, synth_samples=8, synth_steps=2, progress=False, use_cache=False,
                                      latency_check=False, report_path=str(tmp_path / "r.json"))
    cmp = report.comparison
    assert cmp["samples"] == 8 and cmp["outputs"][0]["shape"] == [8, 10] and cmp["outputs"][0]["sqnr_db"] > 10
    x = {"input": np.random.default_rng(3).standard_normal((3, 8, 8, 8)).astype(np.float32)}
    assert runtime.session(model).run(None, x)[0].shape == (3, 10)


def test_the_comparison_rows_stay_within_the_work_budget(monkeypatch):
    """On large inputs (many activation elements per row) the comparison runs fewer rows, MIN_ROWS at
    least; on small ones every sample (up to COMPARE_SAMPLES)."""
    from dfq_onnx.backends import budget

    source = builders.conv_bn_relu_residual(c=8, hw=8, classes=10)
    model, report = dfq_onnx.quantize(source, calib="noise", progress=False, use_cache=False)
    feeds = {"input": np.random.default_rng(3).standard_normal((40, 8, 8, 8)).astype(np.float32)}
    state = type("S", (), {})()
    state.report = report
    monkeypatch.setattr(data, "_samples", lambda st, src: (feeds, "test"))
    state.report.notes["work"] = {"elements_per_row": 10_000}
    assert data.compare_outputs(state, ir.load_model(source), model)["samples"] == 40
    state.report.notes["work"] = {"elements_per_row": int(budget.WORK)}
    assert data.compare_outputs(state, ir.load_model(source), model)["samples"] == budget.MIN_ROWS


def _map_comparison(monkeypatch, kept: int):
    """The comparison of a quantized sigmoid map ([N, 1, 128, 128]: 64 KB a row) on 32 rows, one per call,
    with the FP32 outputs kept in memory up to `kept` bytes; tracemalloc's peak over it."""
    import tracemalloc

    source = builders.sigmoid_map(hw=64)
    model, report = dfq_onnx.quantize(source, calib="noise", progress=False, use_cache=False,
                                      latency_check=False)
    feeds = {"input": np.random.default_rng(5).standard_normal((32, 3, 64, 64)).astype(np.float32)}
    state = type("S", (), {})()
    state.report = report
    state.report.notes["rows_per_call"] = {"calibrate": 1}
    monkeypatch.setattr(data, "_samples", lambda st, src: (feeds, "test"))
    monkeypatch.setattr(data, "KEPT_BYTES", kept)
    monkeypatch.setattr(data, "BLOCK", 4096)
    fp32 = ir.load_model(source)
    tracemalloc.start()
    got = data.compare_outputs(state, fp32, model)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return got, peak


def test_the_comparison_holds_one_call_of_outputs_above_the_kept_bound(monkeypatch):
    """A model with large outputs (ISNet's 124 MB a row): the FP32 outputs go to a file above KEPT_BYTES
    and the error is summed in float64 blocks, so the comparison holds about one call's outputs, not
    every row's (main held the 32 rows' FP32 outputs, their concatenation and a row's float64 copies:
    > 32 rows) -- with the same figures as with every row in memory."""
    in_memory, _ = _map_comparison(monkeypatch, 1 << 40)
    in_file, peak = _map_comparison(monkeypatch, 0)
    assert in_file == in_memory and in_file["samples"] == 32 and in_file["outputs"][0]["sqnr_db"] > 5
    assert peak < 8 * 128 * 128 * 4                 # 8 rows of outputs; the 32 rows alone are 32
