"""Outliers the screen found are chosen without the cost model's allowance where the plan is timed after the
decision (passes/act_precision.timed); KeepFloatChosen keeps them within the allowance measured against
the all-A8 plan, and puts the allowance's own choice back beyond it."""

from __future__ import annotations

import pytest
from _util import nodes_by_op, static_matmul_target, stub_timings
from dfq_onnx.models import act_builders
from dfq_onnx.passes import keep_float

import dfq_onnx
from dfq_onnx.backends import integer_pays


def _compile(tmp_path, monkeypatch, ratios_per_call):
    """outlier_attention on a target whose allowance (0: no float is affordable by the cost model) rejects
    its outlier f2_out; the all-A8 plan timed 0.5x FP32, then the timings given."""
    monkeypatch.setattr(keep_float, "MIN_MACS", 0)
    measure, calls = stub_timings(ratios_per_call)
    monkeypatch.setattr(integer_pays, "measure", measure)
    out, report = dfq_onnx.quantize(act_builders.outlier_attention(),
                                    target=static_matmul_target(tmp_path, allowance=0.0), calib="noise",
                                    cache_dir=str(tmp_path), progress=False)
    return out, report, calls


def _group(notes, tensor):
    return next(k for k, o in notes["outliers"].items() if o["tensors"] == [tensor])


@pytest.mark.parametrize("second, kept", [([1.01] * 3, True), ([1.5] * 3, False)])
def test_outliers_past_the_allowance_are_kept_when_they_measure_within_it(tmp_path, monkeypatch, second,
                                                                          kept):
    out, report, calls = _compile(tmp_path, monkeypatch, [[0.5] * 3, second, [1.5] * 3])
    notes = report.notes["activations"]
    f2 = _group(notes, "f2_out")
    cost = notes["measured_cost"]
    assert cost["priced"] == {} and f2 in cost["past_allowance"] and cost["kept"] is kept
    # the all-A8 plan against FP32, the chosen against all-A8; beyond: the fallback's one prefix (f2 alone)
    assert len(calls) == (2 if kept else 3)
    assert (notes["outliers"][f2]["choice"] == 8) is (not kept)
    assert ("f2_out" in {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")}) is (not kept)
    kf = report.notes["keep_float"]
    assert ("unpriced_plan" in kf) is (not kept)


def test_without_a_timing_the_allowance_decides(tmp_path, monkeypatch):
    """No measured all-integer plan (--no-latency-check): the cost model's price stands, as before."""
    monkeypatch.setattr(keep_float, "MIN_MACS", 0)
    out, report = dfq_onnx.quantize(act_builders.outlier_attention(),
                                    target=static_matmul_target(tmp_path, allowance=0.0), calib="noise",
                                    cache_dir=str(tmp_path), progress=False, latency_check=False)
    notes = report.notes["activations"]
    assert "measured_cost" not in notes and notes["outliers"]
    assert all(o["choice"] == 8 for o in notes["outliers"].values())
    assert "f2_out" in {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")}


def test_beyond_the_line_the_outlier_with_the_most_screened_gain_stays_float(tmp_path, monkeypatch):
    """Both outliers float time beyond the line; f2_out (the larger screened gain) alone within it: the
    fallback keeps f2_out float and gives f1_out back to A8 (main went back to the all-A8 plan). Compiled
    again from the cache: no timing runs and the same model is written."""
    out, report, calls = _compile(tmp_path, monkeypatch, [[0.5] * 3, [1.5] * 3, [1.01] * 3])
    notes = report.notes["activations"]
    f1, f2 = _group(notes, "f1_out"), _group(notes, "f2_out")
    fb = notes["measured_cost"]["fallback"]
    assert (fb["kept"], fb["given_up"]) == ([f2], [f1]) and fb["ratio"] == 1.01 and fb["gain"] == "probe"
    assert fb["probe"]["without"][f2] > fb["probe"]["without"][f1] > fb["probe"]["chosen"]
    assert notes["outliers"][f2]["choice"] == 32 and notes["outliers"][f1]["choice"] == 8
    quantized = {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")}
    assert "f2_out" not in quantized and "f1_out" in quantized
    kf = report.notes["keep_float"]
    assert kf["chosen_plan"]["fallback"] and kf["chosen_plan"]["float_groups"] == [f2]
    assert kf["unpriced_plan"]["float_groups"] == sorted([f1, f2])
    again, _, calls2 = _compile(tmp_path, monkeypatch, [])
    assert calls2 == [] and again.SerializeToString() == out.SerializeToString()
