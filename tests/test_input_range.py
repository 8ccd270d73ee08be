"""--input-range: synthetic samples drawn in a model's own pixel range (synth/search.py squash)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from dfq_onnx.models import builders, signal_builders

import dfq_onnx
from dfq_onnx.backends import runtime
from dfq_onnx.core.errors import DfqError, UsageError
from dfq_onnx.synth import audio_range
from dfq_onnx.synth.search import BOUND, pink_noise, squash

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False)


def test_squash_maps_onto_the_declared_range():
    u = {"x": pink_noise(np.random.default_rng(0), 4, (3, 16, 16)) * 3.0}
    plain = squash({k: v.copy() for k, v in u.items()})["x"]
    mapped = squash({k: v.copy() for k, v in u.items()}, {"x": (0.0, 1.0)})["x"]
    assert -BOUND < plain.min() and plain.max() < BOUND
    assert 0.0 <= mapped.min() and mapped.max() <= 1.0
    np.testing.assert_allclose(mapped, (plain + BOUND) / (2 * BOUND), atol=1e-6)
    other = squash({"y": u["x"].copy()}, {"x": (0.0, 1.0)})["y"]       # other inputs untouched
    np.testing.assert_array_equal(other, plain)



def test_bn_free_model_samples_in_the_range_and_a_warning_without_it():
    model = builders.constant_weights(c_in=3, c=8, classes=5, hw=8)
    _, plain = dfq_onnx.quantize(model, **FAST)
    assert any("--input-range" in w for w in plain.warnings)
    assert plain.notes["synthesis"]["assumed_range"] == {"input": "standardized"}
    a, report = dfq_onnx.quantize(model, input_ranges={"input": (0.0, 1.0)}, **FAST)
    b, _ = dfq_onnx.quantize(model, input_ranges={"input": (0.0, 1.0)}, **FAST)
    assert a.SerializeToString() == b.SerializeToString()              # deterministic
    assert not any("--input-range" in w for w in report.warnings)
    assert "assumed_range" not in report.notes["synthesis"]
    samples = dfq_onnx.api.synthesize(model, samples=8, steps=2, use_cache=False, progress=False,
                                      input_ranges={"input": (0.0, 1.0)}).inputs["input"]
    assert samples.min() >= 0.0 and samples.max() <= 1.0 and samples.std() > 0.05


def test_bn_model_gets_no_warning():
    model = builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8, classes=10))
    _, report = dfq_onnx.quantize(model, **FAST)
    assert not any("--input-range" in w for w in report.warnings)


def test_unknown_input_and_empty_range_are_usage_errors():
    model = builders.constant_weights(c_in=3, c=8, classes=5, hw=8)
    with pytest.raises(DfqError, match="--input-range images: no such model input"):
        dfq_onnx.quantize(model, input_ranges={"images": (0.0, 1.0)}, **FAST)
    with pytest.raises(UsageError, match="LOW < HIGH"):
        dfq_onnx.quantize(model, input_ranges={"input": (1.0, 1.0)}, **FAST)


def test_a_bn_free_non_image_input_gets_the_warning_too():
    """A waveform read through a log-mel before any bias (openWakeWord's melspectrogram): nothing tells
    its scale (the log hides it from the first biased layer), so the samples stay standardized and the
    warning names --input-range."""
    model = signal_builders.log_mel_classifier()
    _, plain = dfq_onnx.quantize(model, **FAST)
    assert any("--input-range audio:LOW,HIGH" in w for w in plain.warnings)
    assert plain.notes["synthesis"]["assumed_range"] == {"audio": "standardized"}
    assert plain.notes["synthesis"]["inferred_range"]["audio"]["range"] is None
    _, given = dfq_onnx.quantize(model, input_ranges={"audio": (-1.0, 1.0)}, **FAST)
    assert not any("--input-range" in w for w in given.warnings)


@pytest.mark.parametrize("level, pick, clipped", [
    (1.0, "[-1, 1] (float audio)", False), (30000.0, "16-bit sample values", False), (30.0, None, False),
    (2.4, "[-1, 1] (float audio)", True)])
def test_a_waveform_reads_the_scale_its_first_biased_layer_balances_at(level, pick, clipped):
    """The waveform classifier's conv reads the audio directly (homogeneous: one decade of score per
    decade of scale; its response std is ~1 at std-1 input); its biases set to +-level / 30 balance them
    at a waveform std of ~0.03 (speech in [-1, 1]), ~1000 (16-bit values) or ~1 (a standardized
    feature: no pick, the samples stay standardized). The samples are drawn within +-LEVEL x that
    balance std, not across the whole convention (a recording's level is not its bound: silero v6
    kept 55.8 % of FP32's decisions with samples filling [-1, 1]); a balance of ~0.08 (level 2.4) reaches
    the bound."""
    model = signal_builders.waveform_classifier()
    conv_bias = next(t for t in model.graph.initializer if t.name == "conv1.bias")
    b = onnx.numpy_helper.to_array(conv_bias)
    biased = (np.sign(b) * level / 30).astype(np.float32)
    conv_bias.CopyFrom(onnx.numpy_helper.from_array(biased, "conv1.bias"))
    _, report = dfq_onnx.quantize(model, **FAST)
    inferred = report.notes["synthesis"]["inferred_range"]["audio"]
    scores = inferred["score_log10_bias_over_response"]
    assert inferred["convention"] == (pick or "standardized (abstained)")
    if pick is None:
        assert inferred["range"] is None
    else:
        bound = 1.0 if "float" in pick else 32767.0
        a = min(bound, audio_range.LEVEL * 10 ** scores["log10_balance_std"])
        assert inferred["range"] == pytest.approx([-a, a], rel=2e-3)      # the note rounds the scores
        assert (a == bound) == clipped
    assert abs(scores["slope_decades_per_decade"] - 1) < 0.05
    assert any("--input-range audio:LOW,HIGH" in w for w in report.warnings)


def test_a_bn_after_the_first_layers_activation_pins_a_waveforms_scale():
    """CREPE (torch, Conv - Relu - BN, per-frame standardized audio): the BN no layer absorbs still says
    what the first layer saw in training, so the input is not read off that layer's raw biases (here set
    to balance at a [-1, 1] waveform, the pick that clipped CREPE's std-1 frames: 95.5 % of FP32's pitches
    kept, 98.6 % with the statistics); the samples stay standardized, with the BN objective and no
    --input-range warning."""
    model = signal_builders.waveform_classifier(post_bn=True)
    conv_bias = next(t for t in model.graph.initializer if t.name == "conv1.bias")
    b = onnx.numpy_helper.to_array(conv_bias)
    conv_bias.CopyFrom(onnx.numpy_helper.from_array((np.sign(b) / 30).astype(np.float32), "conv1.bias"))
    _, report = dfq_onnx.quantize(model, **FAST)
    assert report.notes["synthesis"]["objective"] == "bn"
    assert "inferred_range" not in report.notes["synthesis"]
    assert not any("--input-range" in w for w in report.warnings)


def test_a_long_waveform_draws_the_samples_its_first_layer_outputs_fit(monkeypatch):
    """The audio inference draws samples within input_range.OUT_ELEMENTS outputs of the read layer, as
    the image inference does (DNSMOS P.835's 9 s waveform into a 128-channel conv held 3 GB at 8
    samples); a short frame keeps all of them."""
    from dfq_onnx.backends import runtime
    from dfq_onnx.core import ir
    from dfq_onnx.synth import audio_range, input_range

    rows = []
    run_all = runtime.run_all
    monkeypatch.setattr(runtime, "run_all", lambda s, feeds, fixed: rows.append(len(feeds["audio"]))
                        or run_all(s, feeds, fixed))
    graph = ir.to_graph(signal_builders.waveform_classifier(samples="T"))
    audio_range.infer_audio_range(graph, "audio", (256,))
    assert rows == [input_range.SAMPLES] * 2
    rows.clear()
    monkeypatch.setattr(input_range, "OUT_ELEMENTS", 3 * 8 * 4096 // 4)    # 3 x 8 channels x 4096 / 4
    audio_range.infer_audio_range(graph, "audio", (4096,))
    assert rows == [3, 3]


def _reads_quantized(model: onnx.ModelProto, name: str) -> bool:
    return any(n.op_type == "QuantizeLinear" and n.input[0] == name for n in model.graph.node)


def test_a_non_image_input_whose_range_is_assumed_is_read_float():
    """Nothing tells a BN-free signal's scale: its samples are standardized (a guess), and the input's
    own encoding would clip what lies beyond the guess before any layer sees it; the input is left
    float (passes/assumed_input.py). A given range or an image input keeps its quantizer."""
    model = signal_builders.smoothing_signal_net()
    out, report = dfq_onnx.quantize(model, **FAST)
    assert report.notes["synthesis"]["assumed_range"] == {"signal": "standardized"}
    assert report.notes["float_assumed_input"] == {"signal": ["signal"]}
    assert not _reads_quantized(out, "signal") and any("read float" in w for w in report.warnings)
    x = (np.random.default_rng(1).standard_normal((64, 2, 256)) * 5).astype(np.float32)   # 5x the guess
    want = runtime.session(model).run(None, {"signal": x})[0]
    got = runtime.session(out).run(None, {"signal": x})[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98          # 0.87 with the input quantized
    given, report = dfq_onnx.quantize(model, input_ranges={"signal": (-15.0, 15.0)}, **FAST)
    assert _reads_quantized(given, "signal") and "float_assumed_input" not in report.notes
    image, report = dfq_onnx.quantize(builders.constant_weights(c_in=3, c=8, classes=5, hw=8), **FAST)
    assert report.notes["synthesis"]["assumed_range"] == {"input": "standardized"}
    assert _reads_quantized(image, "input") and "float_assumed_input" not in report.notes
