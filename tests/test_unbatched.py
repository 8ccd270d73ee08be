"""A model with no batch axis (madmom's converted networks: a spectrogram [frames, bins], the batch of
one added by the graph) compiles with a batch axis of one and is written with its own interface
(core/unbatched.py)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from _util import sqnr_db
from dfq_onnx.models import builders, signal_builders

import dfq_onnx
from dfq_onnx.core.errors import DfqError
from dfq_onnx.core.unbatched import add_batch_axis, restore, unbatched_inputs

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False, latency_check=False)


def test_an_input_whose_axis_0_reaches_the_conv_elsewhere_has_no_batch():
    assert unbatched_inputs(gs.import_onnx(signal_builders.unbatched_spectrogram_net())) == ["spec"]
    assert unbatched_inputs(gs.import_onnx(builders.conv_sequence(w=12))) == []
    assert unbatched_inputs(gs.import_onnx(signal_builders.waveform_classifier())) == []


def test_the_batch_axis_of_one_is_undone_exactly():
    graph = gs.import_onnx(signal_builders.unbatched_spectrogram_net(frames=10))
    nodes = len(graph.nodes)
    add_batch_axis(graph)
    assert graph.inputs[0].shape == [1, 10, 12] and graph.outputs[0].shape == [1, 10]
    assert restore(graph) == 2
    assert len(graph.nodes) == nodes and graph.inputs[0].name == "spec" and graph.outputs[0].name == "act"
    assert graph.inputs[0].shape == [10, 12]


def test_the_missing_size_is_asked_for_in_the_declared_layout():
    with pytest.raises(DfqError, match=r"no batch axis.*--input-shape spec:<T>,12"):
        dfq_onnx.quantize(signal_builders.unbatched_spectrogram_net(), **FAST)


def test_a_model_without_batch_axis_compiles_one_example_per_call(tmp_path):
    model = signal_builders.unbatched_spectrogram_net()
    out, report = dfq_onnx.quantize(model, input_shapes={"spec": (16, 12)}, report_path=tmp_path / "r.json",
                                    **FAST)
    assert report.notes["unbatched_inputs"] == ["spec"]
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in out.graph.input]
    assert dims == [["T", 12]]
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert not any(n.name.endswith("/unbatched") for n in out.graph.node)
    spec = np.random.default_rng(1).standard_normal((40, 12)).astype(np.float32)   # another length
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"spec": spec})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"spec": spec})[0]
    assert got.shape == ref.shape == (40,)
    assert sqnr_db(ref, got) > 25
    assert report.comparison["samples"] > 0           # the report fed the source one example per call


def test_a_calib_npz_of_examples_sizes_and_calibrates_it(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, spec=np.random.default_rng(0).standard_normal((6, 16, 12)).astype(np.float32))
    out, report = dfq_onnx.quantize(signal_builders.unbatched_spectrogram_net(), calib=str(path),
                                    use_cache=False, progress=False, latency_check=False)
    assert report.notes["unbatched_inputs"] == ["spec"]
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
