"""ort-cpu's dynamic int8 MatMuls on inputs with outlier channels (passes/smooth.py, dynamic inputs), with
the target's [forms] smoothing = "outliers" (ort-cpu ships it off: BENCHMARKS.md, session 18 tx18)."""

from __future__ import annotations

import re

import numpy as np
import onnx
from _util import padded_token_feeds, run, sqnr_db
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx.core.target import load_target

OPTS = {"progress": False, "use_cache": False}


def outliers_target(tmp_path) -> str:
    """ort-cpu with its dynamic int8 inputs' smoothing on by default ([forms] smoothing = "outliers")."""
    text = open(load_target("ort-cpu").source).read()
    path = tmp_path / "ort_cpu_smoothing.toml"
    path.write_text(re.sub(r'(?m)^smoothing = "off"$', 'smoothing = "outliers"', text))
    return str(path)


def _dynamic_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """MatMulInteger node -> the float tensor its DynamicQuantizeLinear reads."""
    quantizer = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"}
    return {n.name: quantizer[n.input[0]] for n in model.graph.node if n.op_type == "MatMulInteger"}


def test_ort_cpu_smooths_the_dynamic_inputs_with_outlier_channels_by_default(tmp_path):
    """ln1's outlier channels (gamma 30 on 4 channels, the FFN rows for them 30x smaller): the FFN MatMul
    reading them stays dynamic int8 but reads the migrated LayerNorm copy (X / s, its rows diag(s) W),
    because the dynamic int8 of ln1's output alone costs the output more than every W8 weight; the
    MatMuls reading LayerNorm outputs without outliers (q / k / v) keep the plain tensor. --no-smooth
    writes every input unsmoothed; the output is closer to FP32 than that."""
    model = token_builders.token_classifier(act="gelu", ln_outlier=30.0)
    target = outliers_target(tmp_path)
    out, report = dfq_onnx.quantize(model, target=target, **OPTS)
    off, off_report = dfq_onnx.quantize(model, target=target, **OPTS, smooth=False)
    notes = report.notes["smoothing"]
    assert notes["mode"] == "outliers" and "smoothing" not in off_report.notes
    assert all(g["form"] == "dynamic" for g in notes["groups"])
    assert "l1_ln1_out" in notes["applied"] and "l0_ln2_out" not in notes["applied"]
    assert all(g["outlier"] for g in notes["groups"] if g["tensor"] in notes["applied"])
    reads, plain = _dynamic_inputs(out), _dynamic_inputs(off)
    assert reads["l1_f1_MatMulInteger"] == "l1_ln1_out/smooth"
    assert plain["l1_f1_MatMulInteger"] == "l1_ln1_out"
    assert reads["l1_q_MatMulInteger"] == plain["l1_q_MatMulInteger"] == "l0_ln2_out"
    assert all(n.op_type != "MatMulNBits" for n in out.graph.node)
    feeds = padded_token_feeds()
    ref = run(model, feeds)[0]
    assert sqnr_db(ref, run(out, feeds)[0]) > sqnr_db(ref, run(off, feeds)[0]) + 1.0


def test_ort_cpu_writes_a_model_without_outlier_inputs_as_without_smoothing(tmp_path):
    """No dynamic input is an outlier (one screening evaluation says so): the written model is
    --no-smooth's, byte for byte."""
    model = token_builders.token_classifier(act="gelu", outlier=1.0)
    target = outliers_target(tmp_path)
    out, report = dfq_onnx.quantize(model, target=target, **OPTS)
    off, _ = dfq_onnx.quantize(model, target=target, **OPTS, smooth=False)
    notes = report.notes["smoothing"]
    assert notes["applied"] == [] and not any(g["outlier"] for g in notes["groups"])
    assert np.isfinite(notes["weight_loss"])
    assert out.SerializeToString() == off.SerializeToString()


def test_ort_cpu_default_takes_no_smoothing_and_smooth_takes_the_dynamic_inputs():
    """ort-cpu ships [forms] smoothing = "off": the default writes no migration (no samples drawn for it);
    --smooth migrates the LayerNorm-written dynamic inputs, alpha scored per input."""
    model = token_builders.token_classifier(act="gelu", ln_outlier=30.0)
    out, report = dfq_onnx.quantize(model, target="ort-cpu", **OPTS)
    assert "smoothing" not in report.notes
    _, smoothed = dfq_onnx.quantize(model, target="ort-cpu", **OPTS, smooth=True)
    notes = smoothed.notes["smoothing"]
    assert notes["mode"] == "all" and {g["form"] for g in notes["groups"]} == {"dynamic"}
    assert "l1_ln1_out" in notes["applied"]
