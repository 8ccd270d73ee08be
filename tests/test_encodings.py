"""`--export-encodings`: the AIMET/QNN overrides JSON round-trips to the QDQ model's Q/DQ initializers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _util import initializers
from dfq_onnx.models import builders

from dfq_onnx import quantize
from dfq_onnx.cli import main

SIGNED = {onnx.TensorProto.INT8, onnx.TensorProto.INT4, onnx.TensorProto.INT16}


def _decode(entry: dict, signed: bool) -> tuple[float, int]:
    """(scale, ONNX zero point) from one QNN entry: float = (q_u + offset) * scale."""
    bits, offset = entry["bitwidth"], entry["offset"]
    assert entry["min"] == pytest.approx(offset * entry["scale"])
    assert entry["max"] == pytest.approx((offset + 2 ** bits - 1) * entry["scale"])
    return entry["scale"], -offset - (2 ** (bits - 1) if signed else 0)


def _check_round_trip(model: onnx.ModelProto, enc: dict) -> int:
    inits = initializers(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    dq_of = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    checked = 0
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        dq_out = dq_of[n.output[0]].output[0]
        name = dq_out if dq_out in outputs else n.input[0]
        (entry,) = enc["activation_encodings"][name]
        scale, zp = _decode(entry, types[n.input[2]] in SIGNED)
        assert np.float32(scale) == inits[n.input[1]] and zp == int(inits[n.input[2]]), name
        checked += 1
    for weight, entries in enc["param_encodings"].items():
        dq = dq_of[f"{weight}_quantized"]
        signed = types[dq.input[0]] in SIGNED
        decoded = [_decode(e, signed) for e in entries]
        np.testing.assert_array_equal(np.array([s for s, _ in decoded], np.float32), inits[dq.input[1]])
        np.testing.assert_array_equal(np.array([z for _, z in decoded]), inits[dq.input[2]])
        assert all(e["is_symmetric"] == "True" for e in entries)
        checked += 1
    assert len(enc["activation_encodings"]) == sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    return checked


@pytest.mark.parametrize("target, kwargs", [("qnn-htp", {}), ("qnn-htp", {"act_bits": 16, "weight_bits": 4}),
                                            ("tensorrt", {}), ("ort-cpu", {"weight_bits": 5})])
def test_encodings_round_trip(tmp_path, target, kwargs):
    path = tmp_path / "enc.json"
    model, report = quantize(builders.conv_silu(), target=target, calib="noise", progress=False,
                             encodings_path=path, **kwargs)
    enc = json.loads(path.read_text())
    assert enc["version"] == "0.6.1"
    assert _check_round_trip(model, enc) >= 4
    w_bits = kwargs.get("weight_bits", 8)
    assert {e["bitwidth"] for es in enc["param_encodings"].values() for e in es} == {w_bits}
    assert set(enc["param_encodings"]) == {"conv1.weight", "conv2.weight"}
    if target == "qnn-htp":
        (sig,) = enc["activation_encodings"]["sig_out"]
        assert sig["offset"] == 0 and sig["scale"] == 1 / 2 ** kwargs.get("act_bits", 8)


def test_encodings_graph_output_and_residual(tmp_path):
    path = tmp_path / "enc.json"
    model, _ = quantize(builders.conv_bn_relu_residual(), target="qnn-htp", calib="noise", progress=False,
                        encodings_path=path)
    enc = json.loads(path.read_text())
    assert "output" in enc["activation_encodings"]   # a quantized graph output keeps its name
    assert _check_round_trip(model, enc) >= 5


def test_cli_export_encodings(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(), src)
    out, enc = tmp_path / "q.onnx", tmp_path / "enc.json"
    assert main(["-q", "quantize", str(src), "-o", str(out), "--target", "qnn-htp", "--calib", "noise",
                 "--export-encodings", str(enc)]) == 0
    assert _check_round_trip(onnx.load(out), json.loads(enc.read_text())) >= 3
