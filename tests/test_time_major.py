"""Outputs with the batch on axis 1 (a time-major CTC recognizer, [T, N, C]) compile batch-first and are
written in their source layout (core/tail.py: batch_first / restore_batch_axes)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from _util import run
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.core.tail import batch_axis, batch_first, restore_batch_axes

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False, latency_check=False)


def test_the_batch_axis_is_the_output_dimension_named_like_the_input_batch():
    graph = gs.import_onnx(builders.conv_sequence(w=12, time_major=True))
    assert batch_axis(graph, graph.outputs[0]) == 1
    plain = gs.import_onnx(builders.conv_sequence(w=12))
    assert batch_axis(plain, plain.outputs[0]) == 0


def test_batch_first_is_undone_exactly():
    graph = gs.import_onnx(builders.conv_sequence(w=12, time_major=True))
    nodes = len(graph.nodes)
    moved = batch_first(graph)
    assert [m.output for m in moved] == ["output"] and graph.outputs[0].shape == ["N", 12, 6]
    restore_batch_axes(graph, moved)
    assert len(graph.nodes) == nodes and graph.outputs[0].name == "output"
    assert graph.outputs[0].shape == [12, "N", 6]


@pytest.mark.parametrize("bn", [True, False])
def test_a_time_major_recognizer_compiles_in_its_own_layout(bn, tmp_path):
    model = builders.conv_sequence(w=12, time_major=True, bn=bn)
    out, report = dfq_onnx.quantize(model, report_path=tmp_path / "report.json", **FAST)
    assert report.notes["batch_first_outputs"] == ["output"]
    assert not any(n.name.endswith("/batch_first") for n in out.graph.node)
    x = {"input": np.random.default_rng(3).standard_normal((16, 3, 4, 12)).astype(np.float32)}
    want, got = run(model, x)[0], run(out, x)[0]
    assert got.shape == want.shape == (12, 16, 6)
    assert np.mean(want.argmax(-1) == got.argmax(-1)) > 0.9
    row = report.comparison["outputs"][0]            # the report compares it batch-first
    assert report.comparison["samples"] > 0 and row["shape"][0] == report.comparison["samples"]
    assert row["sqnr_db"] > 10


def test_a_time_major_recognizer_pinned_to_batch_one_compiles():
    """Input [1, 3, 4, 12], output [12, 1, 6] (ddddocr's OCR: no batch name to follow): the output's one
    axis of extent 1 is the batch, read batch-first while compiling (every evaluator failed before:
    rows [12, 1, 6] into a row of 1)."""
    model = builders.conv_sequence(w=12, time_major=True, batch=1)
    graph = gs.import_onnx(model)
    assert batch_axis(graph, graph.outputs[0]) == 1
    out, report = dfq_onnx.quantize(model, **FAST)
    assert report.notes["batch_first_outputs"] == ["output"]
    assert [o.name for o in out.graph.output] == ["output"]
    assert not any("/batch_first" in n.name for n in out.graph.node)
    x = {"input": np.random.default_rng(3).standard_normal((1, 3, 4, 12)).astype(np.float32)}
    want, got = run(model, x)[0], run(out, x)[0]
    assert got.shape == want.shape == (12, 1, 6)
    assert np.mean(want.argmax(-1) == got.argmax(-1)) > 0.9


def test_an_output_quantized_after_its_batch_first_transpose_is_restored_with_its_q_dq():
    """EmitQDQ quantizes a graph output where its op's output is (ddddocr's): the Q / DQ then sit after the
    batch-first Transpose and take the output's name. Restoring moves the per-tensor pair in front of the
    source's tensor, the output keeps its name and layout, and no node is named after the Transpose."""
    from dfq_onnx.backends.qdq import Encoding, insert_activation_qdq

    graph = gs.import_onnx(builders.conv_sequence(w=12, time_major=True, batch=1))
    moved = batch_first(graph)
    enc = Encoding(np.float32(1 / 255), np.asarray(0, np.uint8), "uint8", 8)
    insert_activation_qdq(graph, graph.outputs[0], enc, enc.constants("softmax_encoding"))
    assert graph.outputs[0].name == "output/batch_first"
    assert graph.outputs[0].inputs[0].op == "DequantizeLinear"
    restore_batch_axes(graph, moved)
    out = graph.outputs[0]
    assert out.name == "output" and out.shape == [12, 1, 6] and out.inputs[0].op == "DequantizeLinear"
    q = out.inputs[0].inputs[0].inputs[0]
    assert q.op == "QuantizeLinear" and q.inputs[0].inputs[0].op == "Softmax"
    assert not any("/batch_first" in n.name for n in graph.nodes)
    assert not any("/batch_first" in name for name in graph.tensors())
    x = {"input": np.random.default_rng(3).standard_normal((1, 3, 4, 12)).astype(np.float32)}
    got = run(gs.export_onnx(graph), x)[0]
    want = run(builders.conv_sequence(w=12, time_major=True, batch=1), x)[0]
    assert got.shape == (12, 1, 6) and np.abs(got - want).max() <= 1 / 255
