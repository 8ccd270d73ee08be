"""Backend rules from the vendors' documentation, checked on emitted models (see the targets/*.toml comments).

TensorRT (explicit quantization): symmetric int8, zero point 0; Q/DQ on the residual input of an Add but
not between a Conv and the Add it feeds; Concat inputs share one scale; inputs-only placement.
QNN HTP: uint8/uint16 activations, int8/int4 per-channel symmetric weights, fixed Sigmoid/Tanh/Softmax
output encodings (scale = span / 2^bits), no blocked weight DequantizeLinear, Concat shares encodings.
Every profile's output passes onnx.checker and runs in ONNX Runtime close to FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import initializers, normal_feeds, run
from dfq_onnx.models import builders

from dfq_onnx import quantize
from dfq_onnx.core.errors import DfqError
from dfq_onnx.core.target import builtin_targets

TARGETS = sorted(builtin_targets())


def _quantizers(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """float tensor name -> (scale, zero point) of the QuantizeLinear reading it."""
    inits = initializers(model)
    return {n.input[0]: (inits[n.input[1]], inits[n.input[2]])
            for n in model.graph.node if n.op_type == "QuantizeLinear"}


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("builder", ["conv_bn_relu_residual", "concat_branches", "conv_silu", "gemm_bn"])
def test_every_profile_checks_and_runs(target, builder):
    fp32 = getattr(builders, builder)()
    q, _ = quantize(fp32, target=target, calib="noise", progress=False)
    onnx.checker.check_model(q, full_check=True)
    feeds = normal_feeds(fp32, n=8)
    ref, out = run(fp32, feeds)[0], run(q, feeds)[0]
    assert out.shape == ref.shape
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 0.15, f"{target}/{builder}: relative error {rel:.3f}"
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_tensorrt_symmetric_int8_zero_point_zero():
    q, _ = quantize(builders.conv_bn_relu_residual(), target="tensorrt", calib="noise", progress=False)
    qs = _quantizers(q)
    assert qs
    for name, (_, zp) in qs.items():
        assert zp.dtype == np.int8 and np.all(zp == 0), name
    inits = initializers(q)
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear":
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and np.all(zp == 0), n.name   # weights too; bias stays float
    assert not any(inits[n.input[0]].dtype == np.int32 for n in q.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits)


def test_tensorrt_residual_add_placement():
    """Add's residual input is quantized; the Conv output feeding the Add is not (Conv+Add fuse)."""
    q, _ = quantize(builders.conv_bn_relu_residual(), target="tensorrt", calib="noise", progress=False)
    add = next(n for n in q.graph.node if n.op_type == "Add")
    from_conv, residual = sorted(add.input, key=lambda t: _producer(q, t) is not None
                                 and _producer(q, t).op_type == "DequantizeLinear")
    assert _producer(q, from_conv).op_type == "Conv"
    assert _producer(q, residual).op_type == "DequantizeLinear"
    # inputs-only placement: no Conv output is quantized unless another quantized op reads it
    qs = _quantizers(q)
    assert "conv2_out" not in qs and "bn2_out" not in qs and "output" not in qs
    # the Relu after conv1 stays a float op between the conv and the next input Q (TensorRT fuses it)
    assert any(n.op_type == "Relu" for n in q.graph.node)


def test_ort_cpu_keeps_output_placement_for_add():
    """The same residual block on ort-cpu quantizes the Conv output (QLinearAdd reads two u8 inputs)."""
    q, _ = quantize(builders.conv_bn_relu_residual(), target="ort-cpu", calib="noise", progress=False)
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert all(_producer(q, t).op_type == "DequantizeLinear" for t in add.input)


@pytest.mark.parametrize("target", ["tensorrt", "qnn-htp"])
def test_concat_inputs_share_scale(target):
    q, _ = quantize(builders.concat_branches(), target=target, calib="noise", progress=False)
    cat = next(n for n in q.graph.node if n.op_type == "Concat")
    encs = []
    for t in cat.input:
        dq = _producer(q, t)
        assert dq.op_type == "DequantizeLinear"
        encs.append((dq.input[1], dq.input[2]))
    assert len(set(encs)) == 1, encs   # one scale / zero-point initializer pair for all inputs
    qs = _quantizers(q)
    branches = ("relu_a_out", "relu_b_out", "bn_a_out", "bn_b_out")
    scales = {float(s) for t, (s, _) in qs.items() if t in branches}
    assert len(scales) == 1


def test_ort_cpu_concat_inputs_keep_own_scales():
    q, _ = quantize(builders.concat_branches(), target="ort-cpu", calib="noise", progress=False)
    cat = next(n for n in q.graph.node if n.op_type == "Concat")
    assert len({_producer(q, t).input[1] for t in cat.input}) == 2


@pytest.mark.parametrize("act_bits, scale, zp, dtype", [(8, 1 / 256, 0, np.uint8),
                                                         (16, 1 / 65536, 0, np.uint16)])
def test_qnn_htp_fixed_sigmoid_encoding(act_bits, scale, zp, dtype):
    q, _ = quantize(builders.conv_silu(), target="qnn-htp", calib="noise", act_bits=act_bits,
                    progress=False)
    sig = next(n for n in q.graph.node if n.op_type == "Sigmoid")
    s, z = _quantizers(q)[sig.output[0]]
    assert float(s) == pytest.approx(scale, rel=1e-7) and int(z) == zp and z.dtype == dtype
    # the same model on ort-cpu takes the measured range instead
    q2, _ = quantize(builders.conv_silu(), target="ort-cpu", calib="noise", progress=False)
    s2, _ = _quantizers(q2)[sig.output[0]]
    assert float(s2) != pytest.approx(1 / 256, rel=1e-3)


def test_qnn_htp_fixed_tanh_encoding_uint16():
    fp32 = builders.conv_silu()
    for n in fp32.graph.node:
        if n.op_type == "Sigmoid":
            n.op_type = "Tanh"
    q, _ = quantize(fp32, target="qnn-htp", calib="noise", act_bits=16, progress=False)
    tanh = next(n for n in q.graph.node if n.op_type == "Tanh")
    s, z = _quantizers(q)[tanh.output[0]]
    assert float(s) == pytest.approx(1 / 32768) and int(z) == 32768   # ORT's QNN config values


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_qnn_htp_weights_per_channel_symmetric_no_blocked_dq(weight_bits):
    q, _ = quantize(builders.conv_bn_relu_residual(), target="qnn-htp", calib="noise",
                    weight_bits=weight_bits, progress=False)
    inits = initializers(q)
    weight_dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].ndim >= 2]
    assert len(weight_dqs) == 3
    for n in weight_dqs:
        attrs = {a.name: a for a in n.attribute}
        assert "block_size" not in attrs
        assert "axis" in attrs and inits[n.input[1]].ndim == 1        # per-channel
        assert np.all(inits[n.input[2]] == 0)                          # symmetric
        storage = {8: onnx.TensorProto.INT8, 4: onnx.TensorProto.INT4}[weight_bits]
        assert next(t for t in q.graph.initializer if t.name == n.input[0]).data_type == storage
    for t, (_, zp) in _quantizers(q).items():
        assert zp.dtype == np.uint8, t   # activations unsigned


def test_qnn_htp_rejects_illegal_pair_per_op():
    with pytest.raises(DfqError, match="W4A8 is not legal for ConvTranspose.*node 'up'"):
        quantize(builders.convtranspose_bn(), target="qnn-htp", calib="noise", weight_bits=4,
                 progress=False)
    quantize(builders.conv_bn_relu(), target="qnn-htp", calib="noise", weight_bits=4, progress=False)
    with pytest.raises(DfqError, match="tensorrt.*16-bit weight"):
        quantize(builders.conv_bn_relu(), target="tensorrt", calib="noise", weight_bits=16, act_bits=16,
                 progress=False)
