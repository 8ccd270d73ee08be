"""SeparateBias: the openvino target writes a Conv's float bias as Add(conv, b [1, C, 1, 1]) after it
(targets/openvino.toml [bias] separate). The OpenVINO test runs the output of a CNN + recurrent cell whose
zero initial state reads the batch with Shape: with the bias inside the Conv, OpenVINO 2026.4 applied the
first channel's bias to every channel (22.6 dB from ONNX Runtime on this graph); written as an Add it
computes what ONNX Runtime computes."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state, initializers, normal_feeds, openvino_output, run, sqnr_db, state_model
from dfq_onnx.models import builders
from dfq_onnx.models.recurrent_builders import conv_zero_state
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.separate_bias import SeparateBias

from dfq_onnx import quantize
from dfq_onnx.core.errors import TargetError
from dfq_onnx.core.target import load_target, parse_profile


def test_conv_bias_becomes_an_add_with_the_same_function():
    model = builders.conv_bn_relu()
    twice = [SeparateBias(("Conv",)), SeparateBias(("Conv",))]
    state = compile_state(model, [Normalize(), FoldBatchNorm(), *twice])
    convs = [n for n in state.graph.nodes if n.op == "Conv"]
    assert len(convs) == 2 and all(len(n.inputs) == 2 for n in convs)
    for conv in convs:
        add = conv.outputs[0].outputs[0]
        assert add.op == "Add" and add.inputs[1].values.shape == (1, conv.inputs[1].shape[0], 1, 1)
    assert [p["modified"] for p in state.report.passes[-2:]] == [True, False]   # the second: nothing left
    feeds = normal_feeds(model, n=8, seed=1)
    np.testing.assert_allclose(run(state_model(state), feeds)[0], run(model, feeds)[0], atol=1e-4, rtol=1e-4)


def test_openvino_output_writes_conv_biases_as_adds_and_ort_cpu_keeps_them():
    model = conv_zero_state()
    ov_q, _ = quantize(model, target="openvino", calib="noise", progress=False, use_cache=False)
    ort_q, _ = quantize(model, target="ort-cpu", calib="noise", progress=False, use_cache=False)
    ov_convs = [n for n in ov_q.graph.node if n.op_type == "Conv"]
    assert len(ov_convs) == 2 and all(len(n.input) == 2 for n in ov_convs)
    inits = initializers(ov_q)
    readers = {i: n for n in ov_q.graph.node for i in n.input}
    for conv in ov_convs:
        add = readers[conv.output[0]]
        assert add.op_type == "Add" and inits[add.input[1]].shape == (1, 8, 1, 1)
        assert readers[add.output[0]].op_type == "QuantizeLinear"       # the Add writes the quantized tensor
    assert all(len(n.input) == 3 for n in ort_q.graph.node if n.op_type == "Conv")
    feeds = normal_feeds(model, n=8, seed=2)
    assert sqnr_db(run(ort_q, feeds)[0], run(ov_q, feeds)[0]) > 25


def test_openvino_computes_the_openvino_output_as_onnx_runtime_does():
    pytest.importorskip("openvino")
    model = conv_zero_state()
    q, _ = quantize(model, target="openvino", calib="noise", progress=False, use_cache=False)
    feeds = normal_feeds(model, n=4, seed=3)
    got = openvino_output(q, feeds, f32=False)
    assert sqnr_db(run(q, feeds)[0], got) > 40          # bias inside the Conv: 22.6 dB


def test_bias_separate_names_ops_of_the_profile():
    data = dict(load_target("openvino").__dict__)
    assert data["bias_separate"] == ("Conv",)
    doc = {"name": "t", "min_opset": 13, "activation": {}, "weight": {}, "candidates": {},
           "ops": {"Conv": "weighted"}, "bias": {"separate": ["Gemm"]}}
    with pytest.raises(TargetError, match=r"t.toml \[bias\] separate: 'Gemm' is not listed in \[ops\]"):
        parse_profile(doc, "t.toml")
