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
