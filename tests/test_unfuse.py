"""A model saved after ONNX Runtime's extended optimizations (com.microsoft FusedConv / FusedGemm /
FusedMatMul): Normalize writes the standard ops back, so every layer is quantized."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _util import run
from dfq_onnx.models import builders
from onnx import helper, numpy_helper

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.core.unfuse import unfuse_contrib

KW = {"progress": False, "use_cache": False, "latency_check": False}


def _ort_optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    src, out = tmp_path / "src.onnx", tmp_path / "optimized.onnx"
    onnx.save(model, src)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return onnx.load(out)


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_an_ort_optimized_cnn_is_quantized_like_its_source(tmp_path):
    source = builders.conv_bn_relu_residual()
    fused = _ort_optimized(source, tmp_path)
    assert _ops(fused)["FusedConv"] >= 1
    out, report = dfq_onnx.quantize(fused, **KW)
    ops = _ops(out)
    assert not ops["FusedConv"]
    layers = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    weights = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
    assert layers and all(n.input[1] in weights for n in layers)      # every layer reads int8 weights
    assert report.model["canonicalized"]["ORT fused layer unfused"] == _ops(fused)["FusedConv"]
    x = np.random.default_rng(0).normal(0, 1, (16, 8, 8, 8)).astype(np.float32)
    want, got = run(source, {"input": x})[0], run(out, {"input": x})[0]
    assert np.mean(want.argmax(1) == got.argmax(1)) >= 0.8


def _fused_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.2, (10, 64)).astype(np.float32), "g"),     # [N, K]
             numpy_helper.from_array(rng.normal(0, 0.2, (10, 6)).astype(np.float32), "m")]
    nodes = [
        helper.make_node("FusedConv", ["x", "w", "b", "z"], ["c"], domain="com.microsoft", pads=[1, 1, 1, 1],
                         activation="Clip", activation_params=[0.0, 1.5]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("FusedGemm", ["f", "g"], ["h"], domain="com.microsoft", transB=1, alpha=0.5,
                         activation="LeakyRelu", activation_alpha=0.1),
        helper.make_node("FusedMatMul", ["h", "m"], ["y"], domain="com.microsoft", alpha=2.0),
        helper.make_node("FusedMatMul", ["h", "h"], ["gram"], domain="com.microsoft", transB=1, alpha=0.25)]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", 1, [2, 3, 4, 4]),
                                               helper.make_tensor_value_info("z", 1, [2, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, [2, 6]),
                               helper.make_tensor_value_info("gram", 1, [2, 2])], inits)
    graph.value_info.append(helper.make_tensor_value_info("h", 1, [2, 10]))   # as ORT's saved models have
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def test_unfused_nodes_compute_what_the_fused_ones_did():
    model = _fused_model()
    graph = ir.to_graph(model)
    assert unfuse_contrib(graph) == 4
    ops = collections.Counter(n.op for n in graph.nodes)
    assert not any(n.domain == "com.microsoft" for n in graph.nodes)
    assert ops["Conv"] == 1 and ops["Gemm"] == 1 and ops["MatMul"] == 2 and ops["Clip"] == 1
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32),
             "z": rng.normal(0, 1, (2, 4, 4, 4)).astype(np.float32)}
    for want, got in zip(run(model, feeds), run(ir.to_model(graph), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attr, value", [("activation", "Softplus"), ("transBatchA", 1)])
def test_a_fusion_with_no_standard_spelling_is_left_as_it_is(attr, value):
    model = _fused_model()
    target = "FusedConv" if attr == "activation" else "FusedMatMul"
    node = next(n for n in model.graph.node if n.op_type == target)
    for a in list(node.attribute):
        if a.name in (attr, "activation_params"):
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(attr, value))
    graph = ir.to_graph(model)
    assert unfuse_contrib(graph) == 3
    assert sum(n.op == target for n in graph.nodes) == 1
