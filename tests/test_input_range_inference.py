"""A BN-free model's input range read off its first layer (synth/input_range.py)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.synth.input_range import CANDIDATES, infer_range

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False, latency_check=False)


def _scale(rng: tuple[float, float] | None) -> float:
    """The candidates' sample std (search.squash maps (-2.5, 2.5) onto (lo, hi))."""
    return 1.0 if rng is None else (rng[1] - rng[0]) / 5.0


@pytest.mark.parametrize("truth", [(0.0, 1.0), None, (0.0, 255.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inferred_scale_within_a_neighbour_of_the_training_range(truth, seed):
    """Fused stems trained on blocky images (not the synthesis prior) in `truth`: the pick's scale is
    the truth's or a neighbour's (a factor <= 2.5), never another class (x50)."""
    graph = gs.import_onnx(builders.fused_stem(truth, seed=seed))
    r = infer_range(graph, "input", (3, 16, 16))
    assert r.convention is not None and r.channels == 16
    assert set(r.scores) == {k for k, _ in CANDIDATES}
    ratio = _scale(r.range) / _scale(truth)
    assert 1 / 2.5 <= ratio <= 2.5, (r.convention, r.scores)


def test_no_bias_abstains():
    model = builders.fused_stem((0.0, 255.0))
    graph = gs.import_onnx(model)
    conv = next(n for n in graph.nodes if n.name == "conv1")
    conv.inputs = conv.inputs[:2]
    r = infer_range(graph, "input", (3, 16, 16))
    assert r.convention is None and r.range is None and r.scores == {}


def test_far_from_every_candidate_abstains():
    graph = gs.import_onnx(builders.fused_stem((0.0, 255.0)))
    conv = next(n for n in graph.nodes if n.name == "conv1")
    conv.inputs[2].values = conv.inputs[2].values * np.float32(1e4)     # biases 10^4 x the responses
    r = infer_range(graph, "input", (3, 16, 16))
    assert r.convention is None and min(abs(v) for v in r.scores.values()) > 1.0


def test_compile_uses_the_inferred_range_like_the_flag():
    model = builders.fused_stem((0.0, 255.0), seed=1)
    inferred, report = dfq_onnx.quantize(model, **FAST)
    given, flag = dfq_onnx.quantize(model, input_ranges={"input": (0.0, 255.0)}, **FAST)
    # the same samples and every encoding but the input's, which spans [-127.5, 255]: the offset twin
    # mean-subtracted 0..255 too (passes/inferred_input.py)
    # (and conv1's int32 bias, whose scale is the input's times the weight's)
    twin = {"input_scale", "input_zero_point", "conv1.bias_quantized", "conv1.bias_scale"}
    a, b = (_initializers(m) for m in (inferred, given))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a if k not in twin)
    bias = [m["conv1.bias_quantized"] * m["conv1.bias_scale"] for m in (a, b)]
    np.testing.assert_allclose(*bias, atol=float(a["conv1.bias_scale"].max()))
    assert a["input_scale"] * (0 - int(a["input_zero_point"])) == pytest.approx(-127.5, abs=1.0)
    assert report.notes["inferred_input_hull"]["input"]["to"] == [-127.5, 255.0]
    note = report.notes["synthesis"]["inferred_range"]["input"]
    assert note["convention"] == "[0, 255]" and note["range"] == [0.0, 255.0]
    assert "assumed_range" not in report.notes["synthesis"]
    assert any("inferred to read [0, 255]" in w and "--input-range" in w for w in report.warnings)
    assert "inferred_range" not in flag.notes["synthesis"] and not flag.warnings


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_a_one_signed_pick_keeps_the_negative_half_of_a_two_signed_input():
    """A stem trained on [-1, 1] that reads as [0, 1] (seed 1: the within-class miss): the samples are
    [0, 1], but the input's encoding spans the offset twin [-1, 1], so negative pixels reach the conv."""
    model = builders.fused_stem((-1.0, 1.0), seed=1)
    out, report = dfq_onnx.quantize(model, **FAST)
    assert report.notes["synthesis"]["inferred_range"]["input"]["convention"] == "[0, 1]"
    assert report.notes["inferred_input_hull"]["input"]["to"] == [-1.0, 1.0]
    init = _initializers(out)
    assert init["input_scale"] * (0 - int(init["input_zero_point"])) == pytest.approx(-1.0, abs=0.01)
    cells = np.random.default_rng(5).uniform(-1, 1, (64, 3, 4, 4))
    x = {"input": np.kron(cells, np.ones((1, 1, 4, 4))).astype(np.float32)}      # blocky, like the training
    want, got = (ort.InferenceSession(m.SerializeToString()).run(None, x)[0] for m in (model, out))
    sqnr = 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2))
    assert sqnr > 8        # 12 dB; the input clipped at 0: 4 dB (`--input-range input:-1,1`: 21 dB)


def test_a_given_range_is_not_widened():
    model = builders.fused_stem((-1.0, 1.0), seed=1)
    _, report = dfq_onnx.quantize(model, input_ranges={"input": (0.0, 1.0)}, **FAST)
    assert "inferred_input_hull" not in report.notes


def test_bn_model_is_not_inferred():
    model = builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8, classes=10))
    _, report = dfq_onnx.quantize(model, **FAST)
    assert "inferred_range" not in report.notes["synthesis"]


def test_static_batch_pads_the_last_call():
    """A graph exported with a fixed batch of 4: 400 x 400 images draw 6 samples (PIXELS), so the second
    call is padded (runtime.run_batched static) and the pick is the one of the dynamic-batch graph."""
    graph = gs.import_onnx(builders.fused_stem((0.0, 1.0)))
    graph.inputs[0].shape, graph.outputs[0].shape = ["N", 3, 400, 400], None
    dynamic = infer_range(graph, "input", (3, 400, 400))
    graph.inputs[0].shape = [4, 3, 400, 400]
    fixed = infer_range(graph, "input", (3, 400, 400))
    assert fixed.convention == dynamic.convention and fixed.scores == pytest.approx(dynamic.scores, abs=1e-6)


def test_bn_model_with_the_label_objective_is_not_inferred():
    """BN statistics fix the range whatever the objective: no inference, samples standardized."""
    from dfq_onnx.passes.fold_bn import FoldBatchNorm
    from dfq_onnx.passes.normalize import Normalize
    from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize

    from dfq_onnx.core import ir
    from dfq_onnx.core.options import QuantizeOptions
    from dfq_onnx.core.pass_base import run_passes
    from dfq_onnx.core.report import Report
    from dfq_onnx.core.state import CompileState
    from dfq_onnx.core.target import load_target

    model = builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8, classes=10))
    state = CompileState(graph=None, target=load_target("ort-cpu"), options=QuantizeOptions(),
                         report=Report(), model_hash="", source=ir.load_model(model))
    run_passes([Normalize(), FoldBatchNorm()], state)
    assert state.bn_stats
    options = SynthesisOptions(samples=2, steps=0, objective="label", use_cache=False, progress=False)
    result = synthesize(state.graph, state.bn_stats, options, "")
    assert result.objective == "label" and result.inferred == {}


def _sqnr_on_blocky(model, out, lo: float, hi: float) -> float:
    cells = np.random.default_rng(5).uniform(lo, hi, (64, 3, 4, 4))
    x = {"input": np.kron(cells, np.ones((1, 1, 4, 4))).astype(np.float32)}      # blocky, like the training
    want, got = (ort.InferenceSession(m.SerializeToString()).run(None, x)[0] for m in (model, out))
    return float(10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)))


def test_bn_only_in_a_decoder_does_not_pin_a_0_255_input():
    """BN statistics after a ConvTranspose only (torch fuses Conv + BN, not ConvTranspose + BN; CenterFace):
    they say nothing of the input, which is read off the fused first layer; a 0..255 pick is taken."""
    model = builders.fused_stem_decoder((0.0, 255.0), seed=1)
    out, report = dfq_onnx.quantize(model, **FAST)
    note = report.notes["synthesis"]["inferred_range"]["input"]
    assert note["convention"] == "[0, 255]"
    assert report.notes["inferred_input_hull"]["input"]["to"] == [-127.5, 255.0]
    assert any("at its first layer: input input inferred to read [0, 255]" in w for w in report.warnings)
    given, _ = dfq_onnx.quantize(model, input_ranges={"input": (0.0, 255.0)}, **FAST)
    sqnr, flag = _sqnr_on_blocky(model, out, 0, 255), _sqnr_on_blocky(model, given, 0, 255)
    assert sqnr > 15 and sqnr > flag - 3      # 27.1 dB (the flag's 24.8); standardized samples: -0.4 dB


@pytest.mark.parametrize("truth", [None, (-1.0, 1.0)])
def test_bn_only_in_a_decoder_keeps_standardized_samples_within_their_class(truth):
    """The same graph trained on standardized or [-1, 1] inputs: a pick within the standardized scale class
    is not taken (with BN in the model, standardized is the prior, and its samples span [-1, 1] unclipped);
    the samples and the output are those of a compile given no inference at all."""
    model = builders.fused_stem_decoder(truth, seed=2)
    out, report = dfq_onnx.quantize(model, **FAST)
    note = report.notes["synthesis"]["inferred_range"]["input"]
    assert note["range"] is None and "inferred_input_hull" not in report.notes
    assert report.notes["synthesis"]["assumed_range"] == {"input": "standardized"}
    lo, hi = truth or (-2.0, 2.0)
    assert _sqnr_on_blocky(model, out, lo, hi) > 12


def test_sample_count_bounds_the_first_layers_outputs_not_only_the_input():
    """A wide first layer on a large plane (DNSMOS v1: 128 channels over 901 x 161, 7 samples held
    2.6 GB) draws one sample; a stride-2 16-channel stem at 320 x 320 (YOLOv8n) keeps SAMPLES."""
    from dfq_onnx.synth import input_range as ir_
    wide = gs.Node("Conv", attrs={"strides": [1, 1]})
    assert ir_.sample_count((1, 901, 161), [(wide, np.zeros(128))]) == 1
    stem = gs.Node("Conv", attrs={"strides": [2, 2]})
    assert ir_.sample_count((3, 320, 320), [(stem, np.zeros(16))]) == ir_.SAMPLES
    assert ir_.sample_count((1, 901, 161), [(stem, np.zeros(16))]) == 7      # PIXELS alone bounds it
