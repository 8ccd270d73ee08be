"""float16 models: compiled in float32, written with the source's float16 interface."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
from dfq_onnx.models import builders
from onnx import TensorProto

import dfq_onnx
from dfq_onnx.core import float16, ir


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_a_float16_model_compiles_and_keeps_its_float16_interface():
    source = builders.conv_fp16()
    before = source.SerializeToString()
    out, report = dfq_onnx.quantize(source, synth_samples=8, synth_steps=2, use_cache=False, progress=False)
    assert source.SerializeToString() == before
    ir.check_model(out)
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [i.name for i in out.graph.input] == ["input"] and [o.name for o in out.graph.output] == ["output"]
    ops = [n.op_type for n in out.graph.node]
    assert "QuantizeLinear" in ops and ops.count("Cast") == 2
    assert report.notes["float16_interface"] == ["input", "output"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float16)
    ref, got = _run(source, x).astype(np.float32), _run(out, x)
    assert got.dtype == np.float16 and got.shape == ref.shape
    assert np.corrcoef(ref.ravel(), got.astype(np.float32).ravel())[0, 1] > 0.99


def test_widen_reaches_casts_attributes_and_subgraphs():
    x = gs.Variable("x", np.float16, [2])
    half = gs.Variable("half", np.float16, [2])
    filled = gs.Variable("filled", np.float16, [2])
    y = gs.Variable("y", np.float16, [2])
    then = gs.Graph(nodes=[gs.Node("Identity", inputs=[gs.Constant("c", np.ones(2, np.float16))],
                                   outputs=[gs.Variable("t", np.float16, [2])])],
                    outputs=[gs.Variable("t", np.float16, [2])])
    nodes = [gs.Node("Cast", inputs=[x], outputs=[half], attrs={"to": TensorProto.FLOAT16}),
             gs.Node("ConstantOfShape", inputs=[gs.Constant("shape", np.array([2], np.int64))],
                     outputs=[filled], attrs={"value": gs.Constant("v", np.zeros(1, np.float16))}),
             gs.Node("Add", inputs=[half, filled], outputs=[y]),
             gs.Node("If", inputs=[gs.Constant("cond", np.array(True))],
                     outputs=[gs.Variable("z", np.float16, [2])],
                     attrs={"then_branch": then, "else_branch": then})]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y])
    assert float16.widen(graph) == {"x": np.float16, "y": np.float16}
    assert nodes[0].attrs["to"] == TensorProto.FLOAT and nodes[1].attrs["value"].values.dtype == np.float32
    assert all(t.dtype == np.float32 for t in (x, half, filled, y))
    assert then.nodes[0].inputs[0].values.dtype == np.float32
    assert float16.widen(gs.Graph(nodes=[gs.Node("Relu", inputs=[gs.Variable("a", np.float32)],
                                                 outputs=[gs.Variable("b", np.float32)])])) == {}
