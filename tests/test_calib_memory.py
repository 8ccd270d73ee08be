"""Calibration memory (issue 14, session 7): the range observer lists its reductions so that ORT runs
each one soon after its tensor, and the samples move to a file after Calibrate; neither changes a
value or the output."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes import calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize

import dfq_onnx
from dfq_onnx.backends import observers, runtime
from dfq_onnx.backends.spill import file_backed, spill
from dfq_onnx.core import ir


def _observed(graph) -> list[str]:
    return [t.name for n in graph.nodes for t in n.outputs]


@pytest.mark.parametrize("group", [1, 3, None])
def test_range_stats_identical_whatever_the_grouping(group):
    graph = compile_state(builders.conv_bn_relu_residual(), [Normalize(), FoldBatchNorm()]).graph
    tensors = ["input", *_observed(graph)]
    x = {"input": np.random.default_rng(0).standard_normal((4, 8, 8, 8)).astype(np.float32)}
    ref = runtime.session(runtime.observer_model(graph, tensors)).run(None, x)
    step = group or len(tensors)
    got = []
    for i in range(0, len(tensors), step):        # observed `step` tensors per session
        got += runtime.session(observers.range_model(graph, tensors[i:i + step])).run(None, x)
    assert len(got) == 2 * len(ref)
    for t, lo, hi in zip(ref, got[::2], got[1::2]):
        assert lo.tobytes() == t.reshape(len(t), -1).min(axis=1).tobytes()
        assert hi.tobytes() == t.reshape(len(t), -1).max(axis=1).tobytes()


def test_reductions_follow_the_model_deepest_first():
    graph = compile_state(builders.conv_bn_relu_residual(), [Normalize(), FoldBatchNorm()]).graph
    tensors = ["input", *_observed(graph)]
    nodes = list(observers.range_model(graph, tensors).graph.node)
    model_ops = [n.op_type for n in nodes if not n.name.startswith("__observe_")]
    assert [n.op_type for n in nodes[:len(model_ops)]] == model_ops      # the model first, as listed
    reduced = [n.input[0] for n in nodes[len(model_ops):]][::2]
    assert reduced == tensors[::-1]              # then its reductions, the shallowest with the highest index


def test_file_backed_arrays_keep_their_bytes_and_stay_writable():
    arr = np.random.default_rng(1).standard_normal((5, 3, 4, 4)).astype(np.float32)
    mapped = file_backed(arr)
    assert isinstance(mapped, np.memmap) and mapped.shape == arr.shape and mapped.dtype == arr.dtype
    assert mapped.tobytes() == arr.tobytes()
    mapped[0] = 7.0                                # copy-on-write: a private page, `arr` untouched
    assert float(mapped[0, 0, 0, 0]) == 7.0 and mapped[1:].tobytes() == arr[1:].tobytes()
    assert float(arr[0, 0, 0, 0]) != 7.0


def test_spill_moves_only_sets_above_the_bound():
    arrays = {"a": np.ones((4, 8), np.float32), "b": np.zeros((4, 2), np.float32)}
    small = dict(arrays)
    assert spill(small, min_bytes=arrays["a"].nbytes + arrays["b"].nbytes) == 0
    assert small["a"] is arrays["a"] and small["b"] is arrays["b"]
    assert spill(small, min_bytes=0) == 160
    assert all(isinstance(v, np.memmap) for v in small.values())
    assert all(small[k].tobytes() == arrays[k].tobytes() for k in arrays)
    assert spill(small, min_bytes=0) == 0          # already in a file


@pytest.mark.parametrize("opts", [
    {"calib": "synthetic", "synth_samples": 4, "synth_steps": 2, "use_cache": False},
    {"calib": "noise", "calib_samples": 9},
], ids=["synthetic-decision", "noise"])
def test_output_identical_with_the_samples_in_a_file(opts, monkeypatch):
    model = builders.conv_bn_relu_residual()
    plain = ir.serialize(dfq_onnx.quantize(model, progress=False, **opts)[0])
    held = {}

    def spill_all(arrays):
        held["calib"] = arrays
        return spill(arrays, min_bytes=0)

    monkeypatch.setattr(calibrate, "spill", spill_all)
    out, report = dfq_onnx.quantize(model, progress=False, **opts)
    assert ir.serialize(out) == plain
    assert all(isinstance(v, np.memmap) for v in held["calib"].values())
    assert report.notes["work"]["samples_in_file_bytes"] > 0
