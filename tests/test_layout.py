"""Channels-last image inputs (TF exports): found in the graph, synthesized and calibrated channels-first."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from dfq_onnx.models import builders
from onnx import numpy_helper

from dfq_onnx import api
from dfq_onnx.core import ir
from dfq_onnx.synth import layout


def _graph(model):
    return gs.import_onnx(model)


def test_channels_last_input_found_only_behind_a_transpose_to_channels_first():
    first = builders.conv_bn_relu(hw=16)
    assert layout.channels_last_inputs(_graph(first), {"input": (3, 16, 16)}) == []
    last = builders.channels_last(first, scale=1 / 255)          # input -> Mul -> Transpose
    assert layout.channels_last_inputs(_graph(last), {"input": (16, 16, 3)}) == ["input"]
    # the same [H, W, C] shape read without the transpose (e.g. a [N, 16, 16, 3] feature map): not an image
    plain = builders.conv_bn_relu(c_in=16, hw=16)
    assert layout.channels_last_inputs(_graph(plain), {"input": (16, 16, 3)}) == []


def test_channels_first_graph_reads_the_transposed_input_like_the_original():
    last = builders.channels_last(builders.conv_bn_relu(hw=16))
    g = layout.channels_first_graph(_graph(last), {"input": (16, 16, 3)}, ["input"])
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    from dfq_onnx.backends import runtime
    a = runtime.session(gs.export_onnx(g)).run(None, {"input": x})[0]
    b = runtime.session(last).run(None, {"input": x.transpose(0, 2, 3, 1)})[0]
    assert np.array_equal(a, b)


def test_tf_layout_export_gets_the_samples_and_encodings_of_the_channels_first_one(tmp_path):
    """Samples are the transposed samples of the NCHW model (pink prior, same seed) and the quantized
    model's every initializer (scales from ranges measured with views) is the same array."""
    first = builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))
    last = builders.channels_last(first)
    a = api.synthesize(first, samples=4, use_cache=False, progress=False).inputs["input"]
    b = api.synthesize(last, samples=4, use_cache=False, progress=False).inputs["input"]
    assert b.shape == (4, 16, 16, 3) and np.array_equal(a.transpose(0, 2, 3, 1), b)
    outs = []
    for name, model in (("first", first), ("last", last)):
        _, report = api.quantize(model, output=tmp_path / f"{name}.onnx", progress=False, use_cache=False)
        found = report.notes["synthesis"].get("channels_last_inputs")
        assert found == (["input"] if name == "last" else None)
        outs.append({t.name.replace("input_nchw", "input"): numpy_helper.to_array(t)
                     for t in ir.load_model(tmp_path / f"{name}.onnx").graph.initializer})
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) > 4
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_plane_input_found_only_where_the_graph_makes_it_a_one_channel_image():
    first = builders.conv_bn_relu(c_in=1, hw=16)
    for last in (False, True):          # Unsqueeze axis 1, or axis 3 then Transpose (tf2onnx's ExpandDims)
        plane = builders.unit_channel_plane(first, last=last)
        assert layout.plane_inputs(_graph(plane), {"input": (16, 16)}) == ["input"]
    assert layout.plane_inputs(_graph(first), {"input": (1, 16, 16)}) == []
    # a waveform [N, T] unsqueezed into a 1-D Conv: not a plane
    from dfq_onnx.models import signal_builders
    assert layout.plane_inputs(_graph(signal_builders.waveform_classifier()), {"audio": (256,)}) == []


def test_plane_input_gets_the_samples_and_encodings_of_the_one_channel_image_model(tmp_path):
    """A [N, H, W] input the graph unsqueezes into a one-channel image (a Keras Conv2D over a
    spectrogram) is synthesized and calibrated as that image: the samples are the squeezed samples of
    the [N, 1, H, W] model (1/f prior, same seed; white noise before) and every initializer of the
    quantized model (scales from ranges measured with views) is the same array."""
    first = builders.with_data_bn_stats(builders.conv_bn_relu(c_in=1, hw=16))
    a = api.synthesize(first, samples=4, use_cache=False, progress=False).inputs["input"]
    for last in (False, True):
        plane = builders.unit_channel_plane(first, last=last)
        b = api.synthesize(plane, samples=4, use_cache=False, progress=False).inputs["input"]
        assert b.shape == (4, 16, 16) and np.array_equal(a[:, 0], b)
    outs = []
    for name, model in (("first", first), ("plane", builders.unit_channel_plane(first, last=True))):
        _, report = api.quantize(model, output=tmp_path / f"{name}.onnx", progress=False, use_cache=False)
        assert report.notes["synthesis"].get("plane_inputs") == (["input"] if name == "plane" else None)
        outs.append({t.name.replace("input_nchw", "input"): numpy_helper.to_array(t)
                     for t in ir.load_model(tmp_path / f"{name}.onnx").graph.initializer})
    shared = outs[0].keys() & outs[1].keys()
    assert len(shared) > 4 and all(np.array_equal(outs[0][k], outs[1][k]) for k in shared)
