"""A CNN classifier head written as MatMul is quantized like a Gemm; transformer MatMuls keep their form."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from dfq_onnx.models import builders
from dfq_onnx.passes.static_heads import is_static_head
from onnx import TensorProto, helper

from dfq_onnx import api
from dfq_onnx.core.target import load_target


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_matmul_head_of_a_cnn_is_static_and_its_tail_integer(tmp_path):
    src = builders.with_data_bn_stats(builders.conv_bn_relu_residual(hw=16, matmul_head=True))
    model, _ = api.quantize(src, output=tmp_path / "q.onnx", progress=False, use_cache=False)
    assert "DynamicQuantizeLinear" not in _ops(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    fc = next(n for n in model.graph.node if n.op_type == "MatMul")
    assert all(producer[i].op_type == "DequantizeLinear" for i in fc.input)      # static W8A8 like Gemm
    gap = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    assert producer[gap.input[0]].op_type == "DequantizeLinear"                 # the tail stays integer



def _two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, w2 = (helper.make_tensor(n, TensorProto.FLOAT, (16, 16), rng.standard_normal(256).astype(np.float32))
              for n in ("w1", "w2"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_matmul_reading_form_matmuls_or_the_input_keeps_its_form():
    g = gs.import_onnx(onnx.shape_inference.infer_shapes(_two_matmuls()))
    target = load_target("ort-cpu")
    assert [is_static_head(n, target) for n in g.nodes if n.op == "MatMul"] == [False, False]
    head = gs.import_onnx(onnx.shape_inference.infer_shapes(builders.conv_bn_relu_residual(matmul_head=True)))
    assert [is_static_head(n, target) for n in head.nodes if n.op == "MatMul"] == [True]
