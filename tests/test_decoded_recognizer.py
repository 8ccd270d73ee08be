"""A recognizer that decodes in its graph and takes each line's width (trueocr's rec.onnx layout): the
width input is a length input the samples fill (synth/lengths.py), the ArgMax decoding is set aside so the
compile scores the logits it picks from (core/tail.py), and a transposed pointwise Conv1d head's output
reads as logits (core/outputs.py)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from dfq_onnx.models.decoded_builders import decoded_recognizer, masked_set_encoder, topk_detector

import dfq_onnx
from dfq_onnx.core import tail
from dfq_onnx.core.outputs import producer_of

FAST = dict(synth_samples=8, use_cache=False, progress=False)


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_a_width_input_beside_the_image_is_a_length_input():
    from dfq_onnx.synth.lengths import length_inputs
    found = length_inputs(gs.import_onnx(decoded_recognizer()))
    assert [(k.name, k.source, k.axis) for k in found] == [("widths", "x", 3)]
    assert length_inputs(gs.import_onnx(decoded_recognizer(widths=False))) == []


def test_a_recognizer_with_a_width_input_compiles_data_free_with_full_widths(tmp_path):
    model, report = dfq_onnx.quantize(decoded_recognizer(), input_shapes={"x": (1, 1, 8, 16)},
                                      output=tmp_path / "q.onnx", **FAST)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0
    rng = np.random.default_rng(1)
    x = (rng.random((16, 1, 8, 16)) < 0.3).astype(np.float32)
    feeds = {"x": x, "widths": rng.integers(6, 17, 16).astype(np.int64)}
    ids_ref, conf_ref = _run(decoded_recognizer(), feeds)
    ids, conf = _run(model, feeds)
    assert ids.dtype == np.int64 and ids.shape == ids_ref.shape
    assert np.mean(ids == ids_ref) > 0.9
    assert np.abs(conf - conf_ref).max() < 0.1


def test_outputs_decoded_by_argmax_are_scored_at_the_logits_they_pick_from():
    graph = gs.import_onnx(decoded_recognizer())
    found, why = tail.split(graph)
    assert found is not None and "picked by ArgMax / TopK" in why
    assert sorted(n.op for n in found.nodes) == ["ArgMax", "ReduceMax", "Softmax"]
    assert found.cut == ["logits"] and [t.name for t in graph.outputs] == ["logits"]
    assert [t.name for t in graph.inputs] == ["x", "widths"]
    tail.attach(graph, found)
    assert [t.name for t in graph.outputs] == ["ids", "conf"]


def test_an_argmax_with_a_weighted_layer_after_its_scores_is_not_a_tail():
    graph = gs.import_onnx(decoded_recognizer(weighted_after=True))
    found, why = tail.split(graph)
    assert found is None and why == ""


@pytest.mark.parametrize(("kernel", "role"), [(1, "logits"), (3, "other")])
def test_a_transposed_pointwise_conv1d_head_writes_logits(kernel, role):
    graph = gs.import_onnx(decoded_recognizer(decode=False, kernel=kernel))
    assert producer_of(graph.outputs[0]).role == role


def test_an_nms_free_detectors_top_k_is_set_aside_and_its_anchors_scored():
    graph = gs.import_onnx(topk_detector())
    found, why = tail.split(graph)
    assert found is not None and "TopK 'topk'" in why
    assert [n.op for n in found.nodes][0] == "TopK" and "GatherElements" in [n.op for n in found.nodes]
    assert found.cut == ["best", "boxes"] and [t.name for t in graph.outputs] == ["best", "boxes"]
    tail.attach(graph, found)
    assert [t.name for t in graph.outputs] == ["det_boxes", "det_scores"]


def test_an_nms_free_detector_compiles_and_keeps_its_picks(tmp_path):
    model, _ = dfq_onnx.quantize(topk_detector(), output=tmp_path / "q.onnx", **FAST)
    assert [o.name for o in model.graph.output] == ["det_boxes", "det_scores"]
    assert any(n.op_type == "TopK" for n in model.graph.node)
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    (b_ref, s_ref), (b, s) = _run(topk_detector(), {"input": x}), _run(model, {"input": x})
    assert b.shape == b_ref.shape and np.abs(s - s_ref).max() < 0.05    # (near-equal scores may swap rows)


def test_a_boolean_mask_over_a_float_inputs_positions_is_all_valid_in_the_samples(tmp_path):
    from dfq_onnx.synth.lengths import length_inputs
    found = length_inputs(gs.import_onnx(masked_set_encoder()))
    assert [(k.name, k.source, k.axis, k.mask) for k in found] == [("mask", "feats", 1, True)]
    model, report = dfq_onnx.quantize(masked_set_encoder(), input_shapes={"feats": (1, 6, 4)},
                                      output=tmp_path / "q.onnx", **FAST)
    x = np.random.default_rng(3).standard_normal((1, 6, 4)).astype(np.float32)
    feeds = {"feats": x, "mask": np.array([[True] * 4 + [False] * 2])}
    ref, got = _run(masked_set_encoder(), feeds)[0], _run(model, feeds)[0]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
