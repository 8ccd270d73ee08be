"""Graph outputs declared scalar (`shape {}`, as PaddleOCR v5's exports write every output) take the rank
ONNX Runtime's optimized session resolves (backends/runtime_types.fill_output_ranks, in Normalize)."""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models import builders
from onnx import helper

import dfq_onnx
from dfq_onnx.backends import runtime
from dfq_onnx.backends.runtime_types import fill_output_ranks
from dfq_onnx.core import declared_io


def _declared_scalar(model: onnx.ModelProto) -> onnx.ModelProto:
    for o in model.graph.output:
        o.type.tensor_type.shape.ClearField("dim")
    return model


def test_an_output_declared_scalar_gets_the_rank_ort_resolves():
    """A CTC-style recognizer at a dynamic width, its output declared `shape {}`: [?, ?, 6] (the class
    count kept, the batch and width unnamed), so the metric reads it as a sequence of distributions."""
    model = _declared_scalar(builders.conv_sequence(w=None))
    assert declared_io.value_info_shape(model.graph.output[0]) == []
    assert fill_output_ranks(model) == 1
    assert declared_io.value_info_shape(model.graph.output[0]) == [None, None, 6]
    assert fill_output_ranks(model) == 0                  # nothing declared scalar any more


def test_a_true_scalar_and_ranked_outputs_are_left_alone():
    """ReduceSum over every axis (keepdims 0) is a scalar: ORT resolves [] and the declaration stays;
    a ranked output is not asked about."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
    total = helper.make_tensor_value_info("total", onnx.TensorProto.FLOAT, [])
    doubled = helper.make_tensor_value_info("doubled", onnx.TensorProto.FLOAT, ["N", 4])
    two = helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
                               helper.make_node("Mul", ["x", "two"], ["doubled"])],
                              "scalar_out", [x], [total, doubled], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = onnx.ModelProto()
    before.CopyFrom(model)
    assert fill_output_ranks(model) == 0
    assert model == before


def test_the_written_model_declares_the_rank_and_runs(tmp_path):
    """Through the compile: the report's canonicalized notes count it, and the written model declares
    rank 3 and runs at another width."""
    model = _declared_scalar(builders.conv_sequence(w=None))
    out, report = dfq_onnx.quantize(model, calib="noise", input_shapes={"input": (1, 3, 4, 8)},
                                    cache_dir=str(tmp_path), progress=False)
    assert report.model["canonicalized"]["output ranks from ONNX Runtime (declared scalar)"] == 1
    assert len(declared_io.value_info_shape(out.graph.output[0])) == 3
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 12)).astype(np.float32)
    y = runtime.session(out).run(None, {"input": x})[0]
    assert y.shape == (2, 12, 6)
