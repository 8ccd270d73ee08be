"""BN statistics left after activations: the prior measured on them, spectral envelopes picked where it
misses them (synth/envelopes.py), and an image input's range read from them (synth/kept_range.py)."""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models import post_bn_builders, signal_builders
from dfq_onnx.passes import synthesize as synth_pass
from dfq_onnx.passes import synthesize_kept
from onnx import numpy_helper

import dfq_onnx
from dfq_onnx.synth import envelopes
from dfq_onnx.synth.search import pink_noise, squash

OPTS = dict(synth_samples=16, use_cache=False, progress=False)


def _louder_statistics(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """`model` with bn1 trained on first-layer activations `factor` times the scale its statistics say."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in ("bn1.var", "bn1.mean"):
            v = numpy_helper.to_array(t) * (factor ** 2 if t.name == "bn1.var" else factor)
            t.CopyFrom(numpy_helper.from_array(v.astype(np.float32), t.name))
    return out


def test_line_bands_are_half_octaves_that_sum_to_the_signal():
    x = np.random.default_rng(0).standard_normal((3, 2, 256))
    bands = envelopes.line_bands(x)
    assert bands.shape == (3, 10, 2, 256)        # 2 log2(256 / 8) half octaves
    np.testing.assert_allclose(bands.sum(axis=1), x, atol=1e-5)
    assert envelopes.bands(np.zeros((2, 3, 8, 8))).shape == (2, 4, 3, 8, 8)    # images: octaves
    assert envelopes.bands(np.zeros((2, 3, 2))) is None


def test_a_prior_that_misses_the_kept_statistics_takes_the_best_envelopes():
    """Conv - Relu - BN whose BN saw first-layer activations 4x the prior's (CREPE's tonal filters on
    broadband frames: 2.5x): the default compile measures the miss and picks, per sample, the best of
    16 spectral envelopes; the BN objective falls and the BN's output scale moves toward its statistics.
    On main the prior was taken unmeasured."""
    model = _louder_statistics(signal_builders.waveform_classifier(post_bn=True), 4.0)
    _, report = dfq_onnx.quantize(model, **OPTS)
    notes = report.notes["synthesis"]
    kept = notes["kept_bn"]
    assert kept["scale_ratio"]["b1"] < 0.5 and kept["log_mismatch"] > np.log(2)
    assert kept["candidates"] == envelopes.CANDIDATES and notes["start"] == "envelopes"
    assert notes["loss_end"] < notes["loss_start"]
    assert any("spectral envelopes" in p["summary"] for p in report.passes if p["pass"] == "Synthesize")


def test_the_pick_never_raises_a_samples_loss_and_is_deterministic():
    model = _louder_statistics(signal_builders.waveform_classifier(post_bn=True), 4.0)
    first = dfq_onnx.api.synthesize(model, samples=16, use_cache=False, progress=False)
    again = dfq_onnx.api.synthesize(model, samples=16, use_cache=False, progress=False)
    np.testing.assert_array_equal(first.inputs["audio"], again.inputs["audio"])
    prior = dfq_onnx.api.synthesize(model, samples=16, steps=0, use_cache=False, progress=False)
    assert not np.array_equal(first.inputs["audio"], prior.inputs["audio"])
    assert first.loss_end <= first.loss_start


def test_a_prior_that_fits_the_kept_statistics_keeps_its_samples():
    """The builder's statistics sit within 2x of what the prior gives: no candidates, the prior's bytes."""
    model = signal_builders.waveform_classifier(post_bn=True)
    result = dfq_onnx.api.synthesize(model, samples=16, use_cache=False, progress=False)
    prior = dfq_onnx.api.synthesize(model, samples=16, steps=0, use_cache=False, progress=False)
    assert result.kept_bn["candidates"] == 0 and result.loss_start is None
    np.testing.assert_array_equal(result.inputs["audio"], prior.inputs["audio"])


def test_no_candidates_beyond_the_budget(monkeypatch):
    """A model whose 16 candidates would overrun MAC_BUDGET gets fewer; below MIN_CANDIDATES none (the
    prior is still measured and reported)."""
    from dfq_onnx.core import ir
    from dfq_onnx.synth.runner import resolve_shapes

    graph = ir.to_graph(signal_builders.waveform_classifier(post_bn=True))
    shapes = resolve_shapes(graph, {})
    budget = synth_pass.ELEMENT_BUDGET
    assert synthesize_kept.pick_candidates(graph, shapes, 16, budget)[0] == envelopes.CANDIDATES
    macs = synthesize_kept.pick_candidates.__globals__["layer_macs"]
    per_row = sum(macs(nd) for nd in graph.nodes if nd.op in ("Conv", "Gemm"))
    monkeypatch.setattr(synthesize_kept, "MAC_BUDGET", 16 * per_row * 5)
    assert synthesize_kept.pick_candidates(graph, shapes, 16, budget)[0] == 5
    monkeypatch.setattr(synthesize_kept, "MAC_BUDGET", 16 * per_row * 3)
    assert synthesize_kept.pick_candidates(graph, shapes, 16, budget)[0] == 0
    _, report = dfq_onnx.quantize(_louder_statistics(signal_builders.waveform_classifier(post_bn=True), 4.0),
                                  **OPTS)
    assert report.notes["synthesis"]["kept_bn"]["candidates"] == 0
    assert report.notes["synthesis"]["kept_bn"]["log_mismatch"] > np.log(2)


def _trained_on(pixel_range):
    """The image classifier with BN statistics from 1/f images in `pixel_range` (None: standardized)."""
    x = squash({"image": pink_noise(np.random.default_rng(7), 64, (3, 16, 16))},
               {"image": pixel_range} if pixel_range else None)
    return post_bn_builders.with_bn_moments(post_bn_builders.image_classifier(), x)


def test_the_kept_bn_after_the_first_activation_reads_a_0_1_image_input():
    """Keras' Conv - Relu - BN on [0, 1] pixels: the BN statistics fit [0, 1] samples, not standardized
    ones, so the samples are drawn in [0, 1] (one warning names --input-range). On main the kept BN
    pinned the input as standardized (scores here: standardized ~1e2 against [0, 1] ~1e-2)."""
    _, report = dfq_onnx.quantize(_trained_on((0.0, 1.0)), **OPTS)
    picked = report.notes["synthesis"]["kept_bn"]["input_range"]["image"]
    assert picked["convention"] == "[0, 1]" and picked["bn"] == "bn1"
    assert min(picked["score"], key=picked["score"].get) == "[0, 1]"
    assert any("input image inferred to read [0, 1]" in w and "--input-range image" in w
               for w in report.warnings)
    result = dfq_onnx.api.synthesize(_trained_on((0.0, 1.0)), samples=8, use_cache=False, progress=False)
    x = result.inputs["image"]
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_a_standardized_image_input_stays_standardized_without_a_warning():
    _, report = dfq_onnx.quantize(_trained_on(None), **OPTS)
    picked = report.notes["synthesis"]["kept_bn"]["input_range"]["image"]
    assert picked["convention"] == "standardized" and picked["range"] is None
    assert not any("--input-range" in w for w in report.warnings)
