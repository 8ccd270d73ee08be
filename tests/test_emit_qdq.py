"""EmitQDQ: valid QDQ models that ORT runs and fuses, with the target's weight / bias / zero-point rules."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from _util import initializers, nodes_by_op, normal_feeds, run, session
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.core import numerics

GOOD = sorted(builders.GOOD_BUILDERS)


def _quantize_on(model, feeds, tmp_path, **opts):
    """Quantize with ranges measured on `feeds` themselves, so only emission error remains."""
    np.savez(tmp_path / "calib.npz", **feeds)
    out, report = dfq_onnx.quantize(model, calib=str(tmp_path / "calib.npz"), progress=False, **opts)
    return out, report


@pytest.mark.parametrize("name", GOOD)
def test_emitted_model_is_valid_runs_and_is_close_to_fp32(name, tmp_path):
    model = builders.GOOD_BUILDERS[name]()
    feeds = normal_feeds(model, n=64, seed=1)
    out, _ = _quantize_on(model, feeds, tmp_path)
    onnx.checker.check_model(out, full_check=True)
    # W8A8 with exact ranges: ~40 dB per quantizer (uint8 over +-4 sigma), 4-7 quantizers in series on
    # these 2-10 node graphs; the worst observed is ~31 dB (conv_clip6, depthwise with 9 taps per channel).
    sqnr = numerics.sqnr_db(run(model, feeds)[0], run(out, feeds)[0])
    assert sqnr >= 30.0, f"{name}: SQNR {sqnr:.1f} dB"
    assert [t.name for t in out.graph.input] == [t.name for t in model.graph.input]
    assert [t.name for t in out.graph.output] == [t.name for t in model.graph.output]


@pytest.mark.parametrize("w_bits, a_bits, min_sqnr", [
    (8, 8, 30.0), (4, 8, 15.0), (8, 16, 35.0), (4, 16, 15.0), (16, 16, 60.0)])
def test_every_legal_pair_of_ort_cpu_runs(w_bits, a_bits, min_sqnr, tmp_path):
    # ~6 dB per bit of the coarsest quantizer: 4-bit weights ~22 dB, 8-bit ~42 dB, W16A16 ~90 dB here.
    model = builders.conv_bn_relu_residual()
    feeds = normal_feeds(model, n=32, seed=1)
    out, _ = _quantize_on(model, feeds, tmp_path, weight_bits=w_bits, act_bits=a_bits)
    onnx.checker.check_model(out, full_check=True)
    assert numerics.sqnr_db(run(model, feeds)[0], run(out, feeds)[0]) >= min_sqnr


def _q_and_dq(out):
    return nodes_by_op(out, "QuantizeLinear"), nodes_by_op(out, "DequantizeLinear")


def test_activation_scales_and_zero_points_are_scalars():
    # regression: zero points were once shape [1] and ORT refused to fuse QLinearAdd
    out, _ = dfq_onnx.quantize(builders.conv_bn_relu_residual(), progress=False, act_bits=8)   # A8 everywhere
    inits = {t.name: t for t in out.graph.initializer}
    q_nodes, _ = _q_and_dq(out)
    assert len(q_nodes) == 6          # the 6 activation quantizers of test_quant_groups
    for q in q_nodes:
        scale, zp = inits[q.input[1]], inits[q.input[2]]
        assert list(scale.dims) == [] and list(zp.dims) == [], q.name
        assert scale.data_type == onnx.TensorProto.FLOAT and zp.data_type == onnx.TensorProto.UINT8


def _weight_dqs(out, layer_ops=("Conv", "Gemm", "MatMul")):
    """(layer node, weight DQ node, bias DQ node or None) per weighted node."""
    producers = {o: n for n in out.graph.node for o in n.output}
    for node in out.graph.node:
        if node.op_type in layer_ops:
            bias = producers.get(node.input[2]) if len(node.input) > 2 else None
            yield node, producers[node.input[1]], bias, producers[node.input[0]]


@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "gemm_bn", "conv_clip6", "matmul_bn"])
def test_weights_int8_per_channel_symmetric_narrow(name):
    out, _ = dfq_onnx.quantize(builders.GOOD_BUILDERS[name](), progress=False)
    inits = initializers(out)
    layers = list(_weight_dqs(out))
    assert layers
    for node, wdq, _, _ in layers:
        q, scale, zp = (inits[i] for i in wdq.input)
        axis = {a.name: a.i for a in wdq.attribute}["axis"]
        assert q.dtype == np.int8 and zp.dtype == np.int8
        assert scale.shape == (q.shape[axis],) and not zp.any()
        assert q.min() >= -127 and q.max() <= 127                # narrow range
        per_channel_max = np.abs(q).max(axis=tuple(i for i in range(q.ndim) if i != axis))
        assert (per_channel_max == 127).all(), node.name          # absmax scaling uses the full grid


@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "concat_branches", "conv_clip6"])
def test_bias_int32_with_input_times_weight_scale(name):
    out, _ = dfq_onnx.quantize(builders.GOOD_BUILDERS[name](), progress=False)
    inits = initializers(out)
    checked = 0
    for _, wdq, bdq, xdq in _weight_dqs(out):
        bq, bscale, bzp = (inits[i] for i in bdq.input)
        s_in, s_w = inits[xdq.input[1]], inits[wdq.input[1]]
        assert bq.dtype == np.int32 and not bzp.any() and bzp.dtype == np.int32
        np.testing.assert_array_equal(bscale, (np.float32(s_in) * s_w).astype(np.float32))
        checked += 1
    assert checked >= 2


def test_w4a8_int4_weights_at_opset_21_run_in_ort(tmp_path):
    model = builders.conv_bn_relu_residual()
    feeds = normal_feeds(model, n=32, seed=1)
    out, report = _quantize_on(model, feeds, tmp_path, weight_bits=4)
    onnx.checker.check_model(out, full_check=True)
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 21
    weights = [t for t in out.graph.initializer if t.name.endswith(".weight_quantized")]
    assert len(weights) == 3 and all(t.data_type == onnx.TensorProto.INT4 for t in weights)
    assert all(abs(int(v)) <= 7 for t in weights for v in onnx.numpy_helper.to_array(t).ravel())
    assert {layer["weight_dtype"] for layer in report.layers} == {"int4"}
    # 4-bit weights lose ~24 dB against 8-bit (4 bits x 6 dB): well below W8A8 but far from noise.
    sqnr = numerics.sqnr_db(run(model, feeds)[0], run(out, feeds)[0])
    assert 10.0 <= sqnr < 30.0


def test_ort_fuses_the_residual_into_integer_kernels(tmp_path):
    out, _ = dfq_onnx.quantize(builders.conv_bn_relu_residual(), progress=False)
    optimized = tmp_path / "optimized.onnx"
    session(out, optimized_path=str(optimized))
    ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1 and ops["QGemm"] == 1, ops
    assert not {"Conv", "Add", "Gemm", "Relu"} & set(ops), ops    # nothing left in float


def test_shared_weight_dequantized_once():
    out, _ = dfq_onnx.quantize(builders.shared_weight(), progress=False)
    names = [n.name for n in out.graph.node]
    outputs = [o for n in out.graph.node for o in n.output]
    assert len(names) == len(set(names)) and len(outputs) == len(set(outputs))
    weight_dqs = [n for n in nodes_by_op(out, "DequantizeLinear") if n.input[0] == "shared.weight_quantized"]
    assert len(weight_dqs) == 1


def test_two_runs_write_identical_bytes(tmp_path):
    model = builders.conv_bn_relu_residual()
    for name in ("a.onnx", "b.onnx"):
        dfq_onnx.quantize(model, output=tmp_path / name, progress=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    for name in ("c.onnx", "d.onnx"):   # noise calibration is seeded too
        dfq_onnx.quantize(builders.conv_silu(), output=tmp_path / name, calib="noise", progress=False)
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "d.onnx").read_bytes()


def test_report_layers_describe_the_encodings():
    _, report = dfq_onnx.quantize(builders.conv_bn_relu_residual(), progress=False)
    assert [layer["node"] for layer in report.layers] == ["conv1", "conv2", "fc"]
    for layer in report.layers:
        assert (layer["weight_bits"], layer["act_bits"], layer["bias"]) == (8, 8, "int32")
        assert layer["weight_dtype"] == "int8" and layer["per_channel_axis"] == 0


def test_unnamed_nodes_quantize():
    model = builders.conv_bn_relu()
    for node in model.graph.node:
        node.name = ""
    out, report = dfq_onnx.quantize(model, progress=False)
    assert len(report.layers) == 2
