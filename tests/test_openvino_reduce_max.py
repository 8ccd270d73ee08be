"""The openvino target quantizes a ReduceMax as a passthrough (targets/openvino.toml [ops]): its input and
output share one encoding. With only its output quantized (a global max pool ReduceMax keepdims 0 read by a
quantized MatMul, as DNSMOS's Keras head), OpenVINO 2026.4 fused that FakeQuantize into its Reduce node and
the int8 MatMul read wrong codes: 1.1 dB from ONNX Runtime on this graph."""

from __future__ import annotations

import pytest
from _util import initializers, normal_feeds, openvino_output, run, sqnr_db
from dfq_onnx.models.signal_builders import spectrogram_max_head

from dfq_onnx import quantize


def _quantized(model) -> dict[str, tuple]:
    inits = initializers(model)
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
            for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_reduce_max_reads_and_writes_one_encoding_on_openvino():
    model = spectrogram_max_head()
    q, _ = quantize(model, target="openvino", calib="noise", progress=False, use_cache=False)
    node = next(n for n in q.graph.node if n.op_type == "ReduceMax")
    producer = next(n for n in q.graph.node if node.input[0] in n.output)
    assert producer.op_type == "DequantizeLinear"                    # it reads codes
    encodings = _quantized(q)
    assert node.output[0] in encodings
    assert encodings[node.output[0]] == encodings[next(n for n in q.graph.node if producer.input[0] in
                                                       n.output).input[0]]
    feeds = normal_feeds(model, n=8, seed=1)
    assert sqnr_db(run(model, feeds)[0], run(q, feeds)[0]) > 20


def test_openvino_computes_a_reduce_max_head_as_onnx_runtime_does():
    pytest.importorskip("openvino")
    model = spectrogram_max_head()
    q, report = quantize(model, target="openvino", calib="noise", progress=False, use_cache=False)
    feeds = normal_feeds(model, n=8, seed=3)
    got = openvino_output(q, feeds)
    assert sqnr_db(run(q, feeds)[0], got) > 40          # only the output quantized: 1.1 dB
    assert not report.notes["target_runtime"]["agreement"]["departs"]
