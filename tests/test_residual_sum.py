"""ResidualSum: the float residual Add before a LayerNorm written as Sum on ort-cpu, so ONNX Runtime does not
fuse it into its slower SkipLayerNormalization kernel (passes/residual_sum.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _util import padded_token_feeds
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx.backends import runtime


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    path = str(tmp_path / "optimized.onnx")
    runtime.session(model, optimized_path=path)
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _unoptimized(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts).run(None, feeds)


@pytest.mark.parametrize("decomposed", [False, True])
def test_residual_adds_before_layernorms_are_sums_and_ort_keeps_the_pair(tmp_path, decomposed):
    """Both residual Adds of each block (static [N, 16, 128] inputs: what SkipLayerNormFusion matches)
    become Sum; the embedding's Add of a constant position table stays Add; ORT's optimized graph has
    LayerNormalization and no SkipLayerNormalization (4 of them before); the function is the same sum."""
    model = token_builders.token_classifier(decomposed=decomposed)
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False)
    assert report.notes["residual_sum"] == 4
    ops = _optimized_ops(out, tmp_path)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 5 and ops["Sum"] == 4
    back = onnx.ModelProto()
    back.CopyFrom(out)
    for n in back.graph.node:
        if n.op_type == "Sum":
            n.op_type = "Add"
    assert _optimized_ops(back, tmp_path)["SkipLayerNormalization"] == 4
    feeds = padded_token_feeds(n=4, seq=16, vocab=512)
    for a, b in zip(_unoptimized(out, feeds), _unoptimized(back, feeds)):
        np.testing.assert_array_equal(a, b)


def test_other_targets_keep_the_add(tmp_path):
    model = token_builders.token_classifier()
    out, report = dfq_onnx.quantize(model, target="openvino", progress=False, use_cache=False)
    assert "residual_sum" not in report.notes
    assert not any(n.op_type == "Sum" for n in out.graph.node)
