"""In-graph input preprocessing: sampled after it, mapped back through it, left float."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from dfq_onnx.models import builders

from dfq_onnx import api
from dfq_onnx.synth import preprocess

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _pixel_model():
    first = builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))
    return first, builders.channels_last(first, scale=1 / 255, mean=MEAN, std=STD)


def test_affine_prefix_composes_scale_and_shift():
    _, last = _pixel_model()
    g = gs.import_onnx(last)
    p = preprocess.affine_prefix(g, g.inputs[0], (16, 16, 3))
    assert p.ops == ("Mul", "Sub", "Div") and p.end == "input_Div"
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3))
    assert np.allclose(p.a * x + p.b, (x / 255 - np.array(MEAN)) / np.array(STD), atol=1e-5)   # float32
    assert len(preprocess.prefix_nodes(g)) == 3
    assert preprocess.input_prefixes(g, {"input": (16, 16, 3)}, skip={"input"}) == {}


def test_not_affine_stops_the_prefix():
    g = gs.import_onnx(builders.conv_bn_relu(hw=16))
    assert preprocess.affine_prefix(g, g.inputs[0], (3, 16, 16)) is None      # input -> Conv
    _, last = _pixel_model()
    g = gs.import_onnx(last)
    div = next(n for n in g.nodes if n.op == "Div")
    div.inputs = [div.inputs[1], div.inputs[0]]                              # std / x: not affine in x
    assert preprocess.affine_prefix(g, g.inputs[0], (16, 16, 3)).ops == ("Mul", "Sub")


def test_pixel_input_model_gets_the_samples_of_the_standardized_one_and_a_float_prefix(tmp_path):
    first, last = _pixel_model()
    a = api.synthesize(first, samples=4, use_cache=False, progress=False).inputs["input"]
    x = api.synthesize(last, samples=4, use_cache=False, progress=False).inputs["input"]
    assert x.shape == (4, 16, 16, 3) and x.max() > 50                      # pixels, not standardized values
    y = (x / np.float32(255) - np.float32(MEAN)) / np.float32(STD)          # the model's own prefix
    assert np.allclose(y.transpose(0, 3, 1, 2), a, atol=1e-5)
    model, report = api.quantize(last, output=tmp_path / "q.onnx", progress=False, use_cache=False)
    readers = {n.op_type: list(n.input) for n in model.graph.node if n.op_type in ("Mul", "Sub", "Div")}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert set(readers) == {"Mul", "Sub", "Div"}
    assert all(producers.get(i) != "DequantizeLinear" for ins in readers.values() for i in ins)
    assert report.notes["synthesis"]["sampled_after_preprocessing"] == ["input"]
    assert "assumed_range" not in report.notes["synthesis"]


def test_uint8_pixel_input_is_sampled_after_its_cast_not_taken_for_tokens(tmp_path):
    first = builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))
    scaled = builders.channels_last(first, scale=1 / 255, mean=MEAN, std=STD, uint8=True)
    a = api.synthesize(first, samples=4, use_cache=False, progress=False).inputs["input"]
    x = api.synthesize(scaled, samples=4, use_cache=False, progress=False).inputs["input"]
    assert x.dtype == np.uint8 and x.shape == (4, 16, 16, 3)
    y = (x / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
    inside = ((x > 0) & (x < 255)).transpose(0, 3, 1, 2)          # the rest is clipped to [0, 255]
    assert inside.mean() > 0.9
    assert np.abs(y.transpose(0, 3, 1, 2) - a)[inside].max() <= 0.5 / 255 / min(STD) + 1e-5   # rounding
    raw = builders.channels_last(first, uint8=True)              # Cast only: drawn in uint8's range
    x = api.synthesize(raw, samples=4, use_cache=False, progress=False).inputs["input"]
    assert x.dtype == np.uint8 and x.max() - x.min() > 100
    model, _ = api.quantize(scaled, output=tmp_path / "q.onnx", progress=False, use_cache=False)
    assert model.graph.input[0].type.tensor_type.elem_type == 2          # still a uint8 input


def test_timing_feeds_and_shape_probe_take_pixel_inputs():
    """KeepFloat's timing runs and the synthesis shape probe feed a uint8 input uint8 pixels."""
    from dfq_onnx.backends.latency import random_feeds
    from dfq_onnx.synth.runner import row_elements

    first = builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))
    model = builders.channels_last(first, scale=1 / 255, uint8=True)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    feeds = random_feeds(model)
    assert feeds["input"].dtype == np.uint8 and feeds["input"].shape == (2, 16, 16, 3)
    assert feeds["input"].max() > 128
    g = gs.import_onnx(model)
    for t in g.tensors().values():          # unknown shapes: the probe runs the model once
        if isinstance(t, gs.Variable) and t not in g.inputs:
            t.shape = None
    elements, passes = row_elements(g, {"input": (16, 16, 3)})
    assert passes == 1 and elements > 0


def _shape_reader(model, tensor: str):
    """A copy whose output is flattened to [N, -1] with N read from Shape(`tensor`) (exporters' flatten)."""
    from onnx import helper, numpy_helper
    out = type(model)()
    out.CopyFrom(model)
    g, y = out.graph, out.graph.output[0]
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n)
                          for v, n in (([0], "s0"), ([1], "s1"), ([-1], "m1"))])
    g.node.extend([helper.make_node("Shape", [tensor], ["shp"]),
                   helper.make_node("Slice", ["shp", "s0", "s1"], ["batch"]),
                   helper.make_node("Concat", ["batch", "m1"], ["flat"], axis=0),
                   helper.make_node("Reshape", [y.name, "flat"], ["flat_out"])])
    y.CopyFrom(helper.make_tensor_value_info("flat_out", y.type.tensor_type.elem_type, ["n", "k"]))
    return out


def test_a_shape_read_of_the_input_does_not_hide_its_preprocessing(tmp_path):
    """Shape / Size read no values: the prefix is still followed, and the copy's Shape reads y."""
    first = builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))
    a = api.synthesize(first, samples=4, use_cache=False, progress=False).inputs["input"]
    for uint8, tensor in ((True, "input"), (False, "input_Mul")):
        model = _shape_reader(builders.channels_last(first, scale=1 / 255, mean=MEAN, std=STD,
                                                     uint8=uint8), tensor)
        g = gs.import_onnx(model)
        p = preprocess.affine_prefix(g, g.inputs[0], (16, 16, 3))
        assert p is not None and p.ops[-3:] == ("Mul", "Sub", "Div")
        copy = preprocess.without_prefixes(g, {"input": p})
        assert any(n.op == "Shape" and n.inputs[0] is copy.inputs[0] for n in copy.nodes)
        x = api.synthesize(model, samples=4, use_cache=False, progress=False).inputs["input"]
        y = (x / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
        inside = ((x > 0) & (x < 255)).transpose(0, 3, 1, 2) if uint8 else np.ones(a.shape, bool)
        assert np.abs(y.transpose(0, 3, 1, 2) - a)[inside].max() <= 0.5 / 255 / min(STD) + 1e-5
    q, _ = api.quantize(model, output=tmp_path / "q.onnx", progress=False, use_cache=False)
    assert [o.name for o in q.graph.output] == ["flat_out"]


STALE_SCALE, STALE_SHIFT = [0.0142, 0.0188, 0.0146], [-3.8, -1.58, -0.88]   # [0, 255] -> [-3.8, -0.18], ...


def _blocky_pixels(n: int = 32, seed: int = 5) -> np.ndarray:
    cells = np.random.default_rng(seed).uniform(0, 255, (n, 3, 4, 4))
    return np.kron(cells, np.ones((1, 1, 4, 4))).astype(np.float32)


def test_a_prefix_that_cannot_standardize_pixels_draws_them_in_the_pixel_range(tmp_path):
    """A folded input BatchNorm x * a + b whose image of [0, 255] is [-3.8, -0.18] on channel 0 (no mean-0
    std-1 values fit there): the samples are pixels in [0, 255] put through the model's prefix, not
    standardized values behind it (which reached x = -84 .. 410 and calibrated the prefix's output on
    [-2.4, 2.4], clipping real dark pixels: output SQNR 11 dB)."""
    import onnxruntime as ort

    model = builders.affine_input(builders.fused_stem(None, seed=0), STALE_SCALE, STALE_SHIFT)
    g = gs.import_onnx(model)
    p = preprocess.affine_prefix(g, g.inputs[0], (3, 16, 16))
    assert p.raw_range() == (0.0, 255.0) and not p.standardizes(p.raw_range())
    fast = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False, latency_check=False)
    x = api.synthesize(model, samples=8, steps=2, use_cache=False, progress=False).inputs["input"]
    assert x.min() >= 0.0 and x.max() <= 255.0 and x.max() - x.min() > 150
    q, report = api.quantize(model, output=tmp_path / "q.onnx", **fast)
    assert report.notes["synthesis"]["drawn_in_pixel_range"] == {"input": [0.0, 255.0]}
    hull = report.notes["inferred_input_hull"]["input_affine"]        # the prefix's image of all of [0, 255]
    assert np.allclose(hull["to"], [-3.8, 0.0188 * 255 - 1.58], atol=1e-4) and hull["from"][1] < 3.1
    img = _blocky_pixels()
    ref, out = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                .run(None, {"input": img})[0] for m in (model, q))
    assert 10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum()) > 16.0


@pytest.mark.parametrize("scale, mean, std, drawn", [
    (1 / 255, MEAN, STD, None),                 # ImageNet's standardization: the standardized prior holds
    (1 / 255, None, None, (0.0, 255.0)),        # Keras Rescaling(1 / 255): [0, 1]
    (1 / 127.5, [1.0, 1.0, 1.0], None, (0.0, 255.0)),    # x / 127.5 - 1: [-1, 1], only the two-point law fits
    (2.0, [1.0, 1.0, 1.0], None, (0.0, 1.0)),   # a [0, 1] input mapped to [-1, 1]
    (1 / 32768, None, None, None),              # no pixel convention near: kept
])
def test_pixel_convention_of_a_prefix(scale, mean, std, drawn):
    g = gs.import_onnx(builders.channels_last(builders.conv_bn_relu(hw=16), scale=scale, mean=mean, std=std))
    prefixes = preprocess.input_prefixes(g, {"input": (16, 16, 3)})
    assert preprocess.pixel_drawn(prefixes) == ({"input": drawn} if drawn else {})


def test_an_integer_input_behind_a_non_standardizing_scale_keeps_only_its_cast():
    """uint8 pixels -> Cast -> x / 255 ([0, 1]): drawn in [0, 255] through the Cast, the scale stays in the
    graph the search runs on (before: standardized values after the scale, half of them clipped to 0)."""
    first = builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))
    model = builders.channels_last(first, scale=1 / 255, uint8=True)
    x = api.synthesize(model, samples=4, use_cache=False, progress=False).inputs["input"]
    assert x.dtype == np.uint8 and (x == 0).mean() < 0.05 and x.max() - x.min() > 150


def test_timing_feeds_give_a_boolean_mask_booleans():
    """KeepFloat's timing fed a boolean mask input float32 ('Unexpected input data type ... expected
    tensor(bool)': the compile of a GRU step decoder with a boolean source mask stopped there)."""
    from dfq_onnx.models.token_builders import token_encoder

    from dfq_onnx.backends.latency import random_feeds

    model = token_encoder(bool_mask=True)
    for inp in model.graph.input:
        inp.type.tensor_type.shape.dim[0].dim_value = 2
    feeds = random_feeds(model)
    assert feeds["attention_mask"].dtype == np.bool_ and feeds["attention_mask"].all()
    from _util import run

    outs = run(model, feeds)
    assert np.isfinite(outs[1]).all()
