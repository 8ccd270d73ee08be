"""On the openvino target a Relu is absorbed into an 8-bit output encoding only ([activation]
fuse_relu_bits = [8]): OpenVINO 2026.4 drops the clamp of a 16-bit FakeQuantize after a convolution, so a
ReLU absorbed into a uint16 zero-point-0 encoding was lost there (ResNet-20 `--act-bits 16`: top-1 = FP32
on 0.07 of images in OpenVINO). At 16 bits the Relu stays and its output carries the Q/DQ."""

from __future__ import annotations

import pytest
from _util import nodes_by_op, normal_feeds, openvino_output, run, sqnr_db
from dfq_onnx.models import builders

from dfq_onnx import quantize
from dfq_onnx.core.target import load_target


def _model():
    return builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))


@pytest.mark.parametrize("act_bits, relus", [(8, 0), (16, 1)])
def test_relu_absorbed_at_8_bits_only_on_openvino(act_bits, relus):
    model = _model()
    q, _ = quantize(model, target="openvino", act_bits=act_bits, calib="noise", progress=False,
                    use_cache=False)
    assert len(nodes_by_op(q, "Relu")) == relus
    if relus:                                             # the Relu writes what the Q/DQ reads
        relu = nodes_by_op(q, "Relu")[0]
        assert any(n.op_type == "QuantizeLinear" and n.input[0] == relu.output[0] for n in q.graph.node)
    feeds = normal_feeds(model, n=8, seed=1)
    assert sqnr_db(run(model, feeds)[0], run(q, feeds)[0]) > (30 if act_bits == 8 else 40)


def test_ort_cpu_absorbs_at_any_bits():
    assert load_target("ort-cpu").absorbs_relu_at(16) and not load_target("openvino").absorbs_relu_at(16)
    q, _ = quantize(_model(), target="ort-cpu", act_bits=16, calib="noise", progress=False, use_cache=False)
    assert not nodes_by_op(q, "Relu")


def test_openvino_keeps_the_relu_of_a_16_bit_output():
    pytest.importorskip("openvino")
    model = _model()
    q, report = quantize(model, target="openvino", act_bits=16, calib="noise", progress=False,
                         use_cache=False)
    feeds = normal_feeds(model, n=8, seed=3)
    got = openvino_output(q, feeds)
    assert sqnr_db(run(q, feeds)[0], got) > 30
    assert not report.notes["target_runtime"]["agreement"]["departs"]
