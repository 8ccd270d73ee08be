"""sklearn-onnx classifiers: an `ai.onnx.ml` Scaler before the layers, a ZipMap (a sequence of maps) after
them, and models with no layer at all (trees, linear models)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from dfq_onnx.models.tabular_builders import mlp_classifier, tree_classifier

import dfq_onnx
from dfq_onnx.backends.runtime_types import fill_untyped
from dfq_onnx.core import ir

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False)


def _labels(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["output_label"], {"X": x})[0]


def test_an_untyped_scaler_output_is_typed_without_a_scalar_shape():
    model = mlp_classifier()
    assert fill_untyped(model) >= 1
    scaled = next(v for v in model.graph.value_info if v.name == "scaled")
    assert scaled.type.tensor_type.elem_type == 1
    assert not scaled.type.tensor_type.HasField("shape")      # was rank 0: ORT refused fc1 (MatMul)


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("budget", [{}, {"avg_weight_bits": 6}])
def test_an_sklearn_mlp_compiles_with_its_report(tmp_path, zipmap, budget):
    source = mlp_classifier(zipmap=zipmap)
    out, report = dfq_onnx.quantize(source, output=tmp_path / "q.onnx", report_path=tmp_path / "r.json",
                                    **FAST, **budget)
    assert len(report.layers) == 2
    assert [o.name for o in out.graph.output] == [o.name for o in source.graph.output]
    if zipmap:
        assert report.notes["data_tail"]["scored_at"] == ["probabilities"]
        assert "ZipMap" in [n.op_type for n in out.graph.node[-5:]]     # restored with the label's ArgMax
    compared = json.loads((tmp_path / "r.json").read_text())["comparison"]["outputs"]
    assert [c["output"] for c in compared] == ["output_label"] + ([] if zipmap else ["probabilities"])
    offset = next(a.floats for a in source.graph.node[0].attribute if a.name == "offset")
    x = (np.random.default_rng(1).normal(0, 3, (256, 16)) + offset).astype(np.float32)
    agree = np.mean(_labels(out, x) == _labels(source, x))
    assert agree > 0.9


def test_a_model_with_no_layer_is_written_unchanged(tmp_path, monkeypatch, caplog):
    source = tree_classifier()
    monkeypatch.setattr(ir, "to_graph", lambda *_: pytest.fail("the graph was imported"))
    out, report = dfq_onnx.quantize(source, output=tmp_path / "q.onnx", report_path=tmp_path / "r.json",
                                    **FAST)
    assert (tmp_path / "q.onnx").read_bytes() == source.SerializeToString()
    assert report.notes["unchanged"] == {"ops": ["TreeEnsembleClassifier", "ZipMap"]}
    assert "nothing to quantize" in caplog.text and "TreeEnsembleClassifier" in caplog.text
    assert json.loads((tmp_path / "r.json").read_text())["layers"] == []
