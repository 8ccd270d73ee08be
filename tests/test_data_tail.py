"""A model ending in value-dependent-size post-processing (NMS): the compile scores the tensors NMS reads
and the written model computes the same post-processing, in float, on the quantized head."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from dfq_onnx.models.detector_builders import conv_nms

import dfq_onnx
from dfq_onnx.core import ir, tail

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False)


def _run(model, x, scale=None):
    feeds = {"input": x} | ({} if scale is None else {"scale": scale})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_split_sets_the_nms_tail_aside_and_attach_restores_it():
    graph = gs.import_onnx(conv_nms(scale_input=True))
    found, why = tail.split(graph)
    assert found is not None and "NonMaxSuppression 'nms'" in why
    assert [n.op for n in found.nodes] == ["NonMaxSuppression", "Gather", "Gather", "Gather", "Unsqueeze",
                                           "Mul"]      # the scale input's Unsqueeze feeds the tail only
    assert found.cut == ["boxes", "scores"]
    assert [t.name for t in graph.outputs] == ["boxes", "scores"]
    assert [t.name for t in graph.inputs] == ["input"]          # `scale` is read by the tail only
    assert not any(n.op in tail.DATA_DEPENDENT for n in graph.nodes)
    tail.attach(graph, found)
    assert [t.name for t in graph.outputs] == ["det_boxes", "det_class"]
    assert [t.name for t in graph.inputs] == ["input", "scale"]
    nms = next(n for n in graph.nodes if n.op == "NonMaxSuppression")
    assert nms.inputs[0] is next(n for n in graph.nodes if n.name == "box_transpose").outputs[0]


def test_a_data_dependent_op_before_quantizable_layers_is_not_split():
    graph = gs.import_onnx(conv_nms(early=True))
    found, why = tail.split(graph)
    assert found is None and "NonZero 'nonzero' precedes quantizable layers (conv2" in why
    assert len(graph.nodes) == len(gs.import_onnx(conv_nms(early=True)).nodes)


@pytest.mark.parametrize("scale_input", [False, True])
def test_a_detector_with_nms_compiles_and_keeps_its_post_processing(scale_input):
    source = conv_nms(scale_input=scale_input)
    before = source.SerializeToString()
    out, report = dfq_onnx.quantize(source, **FAST)
    assert source.SerializeToString() == before
    ir.check_model(out)
    assert [i.name for i in out.graph.input] == [i.name for i in source.graph.input]
    assert [o.name for o in out.graph.output] == ["det_boxes", "det_class"]
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("NonMaxSuppression") == 1 and "QuantizeLinear" in ops
    assert report.notes["data_tail"]["scored_at"] == ["boxes", "scores"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    scale = np.full((2, 4), 2.0, np.float32) if scale_input else None
    ref, got = _run(source, x, scale), _run(out, x, scale)
    assert got[0].ndim == 3 and got[0].shape[-1] == 4 and got[1].ndim == 1
    assert got[0].shape[1] == got[1].shape[0]
    # the quantized head keeps most of FP32's detections (same class, close boxes)
    assert abs(len(got[1]) - len(ref[1])) <= max(2, len(ref[1]) // 4)


def test_control_flow_holding_a_data_dependent_op_is_part_of_the_tail():
    x = gs.Variable("x", np.float32, [4])
    y = gs.Variable("y", np.float32, [4])
    kept = gs.Variable("kept", np.int64, None)
    body_out = gs.Variable("nz", np.int64, None)
    body = gs.Graph(nodes=[gs.Node("NonZero", inputs=[y], outputs=[body_out])], outputs=[body_out])
    nodes = [gs.Node("Relu", name="relu", inputs=[x], outputs=[y]),
             gs.Node("If", name="branch", inputs=[gs.Constant("cond", np.array(True))], outputs=[kept],
                     attrs={"then_branch": body, "else_branch": body})]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[kept])
    found, why = tail.split(graph)
    assert found is not None and "If 'branch'" in why
    # the branch reads y from the enclosing graph: y is the head's output
    assert [n.name for n in graph.nodes] == ["relu"] and [t.name for t in graph.outputs] == ["y"]
    assert found.cut == ["y"]
    tail.attach(graph, found)
    assert [t.name for t in graph.outputs] == ["kept"] and body.nodes[0].inputs[0] is y
