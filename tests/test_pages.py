"""Line-drawing pages beside the prior for dense-output models without BN statistics (synth/pages.py)."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.models.dense_builders import stroke_map
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize

from dfq_onnx.synth import pages

OPTS = dict(samples=8, steps=0, progress=False, use_cache=False)


def _synth(model, **kw):
    state = compile_state(model, [Normalize(), FoldBatchNorm()])
    return synthesize(state.graph, state.bn_stats, SynthesisOptions(**{**OPTS, **kw}), "m")


def test_is_dense_reads_h_w_at_one_stride():
    assert pages.is_dense((240, 320, 2), (3, 480, 640))          # CRAFT: [N, H/2, W/2, 2]
    assert pages.is_dense((1, 640, 640), (3, 640, 640))
    assert pages.is_dense((21, 65, 65), (3, 513, 513))           # ceil(513 / 8)
    assert not pages.is_dense((84, 2100), (3, 320, 320))         # YOLOv8's [N, 84, boxes]
    assert not pages.is_dense((1000,), (3, 224, 224))
    assert not pages.is_dense((2, 4, 4), (3, 32, 32))            # 8 x 8 cells of a 32 x 32 input: too coarse
    assert not pages.is_dense((240, 2, 160), (3, 480, 640))      # H at stride 2, W at 4: no single stride


def test_pages_are_taken_where_the_head_fires_only_on_strokes():
    fired = _synth(stroke_map(threshold=2.5))
    assert fired.start == "pink+pages" and fired.pages["taken"] and fired.pages["gain"] >= pages.GAIN
    prior = _synth(stroke_map(threshold=2.5), seed=0, samples=8)
    x = fired.inputs["input"]
    np.testing.assert_array_equal(x[0::2], prior.inputs["input"][0::2])        # the prior's kept samples
    np.testing.assert_array_equal(x[1::2], pages.pages(0, 4, (3, 32, 32)))      # every second one a page


def test_pages_not_taken_where_the_prior_fires_the_head():
    plain = _synth(stroke_map(threshold=0.0))
    assert plain.start == "pink" and plain.pages and not plain.pages["taken"]
    assert plain.pages["gain"] < pages.GAIN


@pytest.mark.parametrize("model", [stroke_map(threshold=2.5, classify=True),        # [N, 2]: not a map
                                   builders.with_data_bn_stats(builders.conv_bn_relu(hw=16))])  # objective bn
def test_no_probe_without_a_dense_output_or_with_bn_statistics(model, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probe run")
    monkeypatch.setattr(pages, "output_spans", no_probe)
    result = _synth(model)
    assert result.start == "pink" and not result.pages


def test_pages_follow_the_input_range_and_the_seed():
    a = _synth(stroke_map(threshold=1.0), input_ranges={"input": (-1.0, 1.0)})    # 2.5 standardized
    b = _synth(stroke_map(threshold=1.0), input_ranges={"input": (-1.0, 1.0)})
    assert a.start == "pink+pages"
    np.testing.assert_array_equal(a.inputs["input"], b.inputs["input"])
    np.testing.assert_allclose(a.inputs["input"][1::2], pages.pages(0, 4, (3, 32, 32)) / 2.5, atol=1e-6)
    c = _synth(stroke_map(threshold=2.5), seed=1)
    d = _synth(stroke_map(threshold=2.5))
    assert not np.array_equal(c.inputs["input"][1::2], d.inputs["input"][1::2])


def test_decision_cached_and_pages_redrawn(tmp_path, monkeypatch):
    model = stroke_map(threshold=2.5)
    first = _synth(model, use_cache=True, cache_dir=str(tmp_path))
    entries = list((tmp_path / "synthetic").glob("*.npz"))
    assert first.start == "pink+pages" and len(entries) == 1 and entries[0].stat().st_size < 4096

    def no_probe(*args, **kwargs):
        raise AssertionError("probe run on a cache hit")
    monkeypatch.setattr(pages, "output_spans", no_probe)
    again = _synth(model, use_cache=True, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.inputs["input"], first.inputs["input"])
    assert again.pages == first.pages


def _compile(model, tmp_path, **kw):
    import dfq_onnx
    kw = {"synth_steps": 0, "synth_samples": 16, "act_bits": 8, **kw}     # no search, no activation decision
    return dfq_onnx.quantize(model, cache_dir=str(tmp_path), progress=False, **kw)


def test_warning_when_a_raw_map_output_stays_far_below_its_weights(tmp_path, caplog):
    """The stroke head with a threshold no synthetic sample reaches: its map stays at the head's bias."""
    with caplog.at_level("WARNING"):
        _, report = _compile(stroke_map(threshold=50.0), tmp_path)
    flagged = report.notes["dense_output_range"]
    assert list(flagged) == ["map"] and flagged["map"]["layer"] == "head"
    assert any("output map:" in r.getMessage() and "--calib" in r.getMessage() for r in caplog.records)


def test_no_warning_on_a_map_the_samples_fire(tmp_path, caplog):
    _, report = _compile(stroke_map(threshold=0.0), tmp_path)
    assert "dense_output_range" not in report.notes
    _, report = _compile(stroke_map(threshold=50.0, classify=True), tmp_path / "c")   # not a map
    assert "dense_output_range" not in report.notes


def test_default_compile_is_deterministic_with_pages(tmp_path):
    from dfq_onnx.core import ir
    model = stroke_map(threshold=3.0)
    first, r1 = _compile(model, tmp_path / "a", synth_steps=None, act_bits=None)     # search, decision
    again, r2 = _compile(model, tmp_path / "b", synth_steps=None, act_bits=None)
    cached, r3 = _compile(model, tmp_path / "a", synth_steps=None, act_bits=None)
    assert r1.notes["synthesis"]["start"] == "pink+pages" and r1.notes["synthesis"]["pages"]["taken"]
    assert ir.serialize(first) == ir.serialize(again) == ir.serialize(cached)


def test_probe_runs_a_batch_fixed_by_the_graph_one_row_per_call():
    """A graph exported at batch 1 (MediaPipe's selfie segmenter through a tflite converter): the probe fed 16
    rows at once and ORT refused the input (Synthesize failed)."""
    fixed = _synth(stroke_map(threshold=2.5, batch=1))
    dynamic = _synth(stroke_map(threshold=2.5))
    assert fixed.pages == dynamic.pages and fixed.start == "pink+pages"
    np.testing.assert_array_equal(fixed.inputs["input"], dynamic.inputs["input"])
