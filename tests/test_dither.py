"""Dithered weight scoring (sensitivity/dither.py): offset 0 is the plain probe bit for bit, a half-step
offset re-draws the activation rounding inside the encodings' ranges while 0 stays exact, and the
evaluator's terms average the row parts' grids."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from _util import normal_feeds
from dfq_onnx.models import builders
from dfq_onnx.passes.sensitivity import SensitivityOptions, score
from test_sensitivity import _fp32, _probe, _state

from dfq_onnx.sensitivity import dither, evaluator, probe

NAMES = ["conv_bn_relu_residual", "concat_branches", "conv_silu"]


@pytest.mark.parametrize("name", NAMES)
def test_zero_offset_is_the_plain_probe(name):
    model = builders.GOOD_BUILDERS[name]()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=11)
    plain, dith = _probe(state), _probe(state, dither=True)
    assert dith.dither and not plain.dither
    zero = dither.offsets(dith.dither, 0.0)
    groups = list(plain.selects)
    for config in ({}, *({g: 4} for g in groups), {g: (4, 8)[i % 2] for i, g in enumerate(groups)}):
        want = probe.Probe(plain, optimize=False).run(config, feeds)
        got = probe.Probe(dith, optimize=False).run(config, {**feeds, **zero})
        seg = probe.Probe(dith, optimize=False, segmented=True).run_batch(config, {**feeds, **zero}, key=0)
        for w, g, s in zip(want, got, seg):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} {config}")
            np.testing.assert_array_equal(s, w, err_msg=f"{name} {config} segmented")


def test_half_step_redraws_the_rounding_within_the_range():
    model = builders.conv_bn_relu_residual()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=12)
    pm = _probe(state, dither=True)
    p = probe.Probe(pm, optimize=False)
    fp32 = probe.session(_fp32(state)).run(None, feeds)[0]
    y0 = p.run({}, {**feeds, **dither.offsets(pm.dither, 0.0)})[0]
    y1 = p.run({}, {**feeds, **dither.offsets(pm.dither, 0.5)})[0]
    assert np.abs(y1 - y0).max() > 0                           # another rounding draw
    step = float(np.abs(fp32).max()) / 127
    assert np.abs(y1 - fp32).max() <= 4 * step                 # still the model, within a few steps
    assert np.abs(y0 - fp32).max() <= 4 * step


def test_evaluator_parts_run_at_their_offsets():
    """Rows r mod 2 = k run at offset k / 2: each row's outputs are the probe's at its offset, the
    terms are formed on all rows, and the passes are those of the undithered evaluator."""
    model = builders.conv_bn_relu_residual()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=13)
    pm = _probe(state, dither=True)
    ev = evaluator.Evaluator(probe.Probe(pm, segmented=True, samples=8), _fp32(state), feeds, None, "mse",
                             batch=2, dither=2)
    g = next(iter(pm.selects))
    out = ev.outputs({g: 4})[0]
    p = probe.Probe(pm, optimize=False)
    for k in range(2):
        rows = {n: v[k::2] for n, v in feeds.items()}
        want = p.run({g: 4}, {**rows, **dither.offsets(pm.dither, k / 2)})[0]
        np.testing.assert_allclose(out[k::2], want, rtol=1e-5, atol=1e-6)
    plain = evaluator.Evaluator(probe.Probe(_probe(state)), _fp32(state), feeds, None, "mse", batch=2)
    plain.outputs({g: 4})
    assert ev.forward_passes == plain.forward_passes == 4 + 4      # reference + one configuration
    assert ev.relative({g: 4})[0] > 0


def test_dithered_scoring_changes_terms_not_the_reference_rows():
    model = builders.conv_bn_relu_residual()
    state = _state(model, act_bits=8)
    samples = normal_feeds(model, n=8, seed=14)
    opts = SensitivityOptions(weight_bits=(4, 8), use_cache=False, progress=False, incontext=False,
                              pairs=False)
    plain, _ = score(state, opts, samples=samples)
    dith, _ = score(state, dataclasses.replace(opts, dither=2), samples=samples)
    assert dith.evaluations == plain.evaluations      # the same rows: one call per part of them
    assert dith.forward_passes == 2 * plain.forward_passes and dith.meta["dither"] == 2
    assert dith.singles != plain.singles
    with pytest.raises(Exception, match="dither"):
        SensitivityOptions(dither=0)


def _pairs(zp: int, dtype, scale: float) -> gs.Graph:
    """x -> Q/DQ -> Q/DQ (the same encoding twice: a Reshape / Concat chain's re-quantization) -> y."""
    s, z = gs.Constant("s", np.asarray(scale, np.float32)), gs.Constant("z", np.asarray(zp, dtype))
    x = gs.Variable("x", np.float32, [None])
    nodes, t = [], x
    for i in range(2):
        q, y = gs.Variable(f"q{i}", dtype, [None]), gs.Variable(f"y{i}", np.float32, [None])
        nodes += [gs.Node("QuantizeLinear", inputs=[t, s, z], outputs=[q]),
                  gs.Node("DequantizeLinear", inputs=[q, s, z], outputs=[y])]
        t = y
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[nodes[1].outputs[0], t], opset=21)


def _session(graph: gs.Graph):
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("zp,dtype", [(128, np.uint8), (0, np.int8), (0, np.uint8)])
def test_offsets_keep_zero_exact_and_round_to_the_nearest_point(zp, dtype):
    """Every offset: 0 stays 0 (a plain shift made it -s/2), each value goes to the nearest point of the
    shifted grid with 0 added, and a second pair of the same encoding leaves the values where they are."""
    scale = 0.1
    x = np.concatenate([np.zeros(8), np.random.default_rng(15).uniform(-20, 20, 4000)]).astype(np.float32)
    plain = _session(_pairs(zp, dtype, scale)).run(None, {"x": x})
    g = _pairs(zp, dtype, scale)
    scales, _ = dither.dither_activations(g)
    sess = _session(g)
    info = np.iinfo(dtype)
    inside = (x >= scale * (info.min - zp + 1)) & (x <= scale * (info.max - zp - 1))    # not saturated
    for delta in (0.0, 0.25, 0.5, 0.75):
        first, second = sess.run(None, {"x": x, **dither.offsets(scales, delta)})
        if delta == 0:
            np.testing.assert_array_equal(first, plain[0])
            np.testing.assert_array_equal(second, plain[1])
        assert not first[:8].any() and not second[:8].any(), delta
        k = np.round(first / scale + delta)
        on_grid = np.isclose(first, (k - delta) * scale, atol=1e-5) | (first == 0)
        assert on_grid[inside].all(), delta
        points = np.array([0.0, *((np.arange(-300, 300) - delta) * scale)])
        nearest = np.abs(x[inside, None] - points[None, :]).min(axis=1)
        np.testing.assert_allclose(np.abs(first - x)[inside], nearest, atol=1e-5)
        np.testing.assert_array_equal(second[inside], first[inside])


@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "conv_silu"])
def test_half_step_adds_no_bias_on_zero_padded_rows(name):
    """Inputs zero on half their width (a text line's right-hand padding): the half-step grid's output
    bias vs FP32 stays within 0.1 output steps of Emit's grid's (a plain shift: 0.15 / 0.12 over)."""
    model = builders.GOOD_BUILDERS[name]()
    state, feeds = _state(model), normal_feeds(model, n=64, seed=12)
    feeds = {k: np.where(np.arange(v.shape[-1]) < v.shape[-1] // 2, v, 0).astype(v.dtype)
             for k, v in feeds.items()}
    pm = _probe(state, dither=True)
    p = probe.Probe(pm, optimize=False)
    fp32 = probe.session(_fp32(state)).run(None, feeds)[0]
    step = float(np.abs(fp32).max()) / 127
    bias = [float((p.run({}, {**feeds, **dither.offsets(pm.dither, d)})[0] - fp32).mean()) / step
            for d in (0, .5)]
    assert abs(bias[1]) <= abs(bias[0]) + 0.1, bias
