"""Views of synthetic samples for range calibration: deterministic, image-like inputs only, wider ranges."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.synthesize import SynthesisOptions, Synthesize

from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.synth.augment import _shift, is_image_like, with_views


def _images(n=5, c=3, hw=16, seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((n, c, hw, hw)).astype(np.float32)}


def test_views_are_deterministic_in_the_seed_and_start_with_the_samples():
    x = _images()
    a, b, other = (with_views(x, 4, s)["input"] for s in (0, 0, 1))
    assert a.shape == (20, 3, 16, 16) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    assert np.array_equal(a[:5], x["input"])                         # view 0: the samples themselves
    assert np.array_equal(a[5:10], x["input"][..., ::-1])            # view 1: mirror images
    assert not any(np.array_equal(a[10 + i], a[i]) for i in range(5))  # later views differ (shifted)
    assert with_views(x, 1, 0) is x


def test_shift_moves_content_and_reflects_the_border():
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    y = _shift(x, 1, -2)
    assert np.array_equal(y[0, 1:, :6], x[0, :7, 2:])                # content moved down 1, left 2
    assert np.array_equal(y[0, 0], _shift(x, 0, -2)[0, 1])           # top row: reflection of row 1
    assert np.array_equal(_shift(x, 0, 0), x)


@pytest.mark.parametrize("shape", [(4, 16), (4, 3, 16), (4, 16, 8, 8), (4, 3, 4, 32), (4, 3, 8, 8, 8)],
                         ids=["features", "sequence", "16-channel", "short-side-4", "rank-5"])
def test_only_image_like_inputs_get_views(shape):
    assert not is_image_like(shape)
    feeds = {"input": np.ones(shape, np.float32)}
    assert with_views(feeds, 4, 0) is feeds
    mixed = {"image": np.ones((4, 3, 16, 16), np.float32), "other": np.ones(shape, np.float32)}
    assert with_views(mixed, 4, 0) is mixed                          # all inputs image-like, or none


def test_two_image_inputs_share_each_samples_transform():
    x = _images(n=6, hw=16)["input"]
    out = with_views({"a": x, "b": x.copy()}, 3, 7)
    assert np.array_equal(out["a"], out["b"])


def _calibrated(views: int, tmp_path):
    model = builders.conv_bn_relu(c_in=3, hw=8)
    opts = dict(samples=8, steps=4, population=1, progress=False, cache_dir=str(tmp_path))
    synth = Synthesize(SynthesisOptions(**opts))
    passes = [Normalize(), FoldBatchNorm(), FindQuantGroups(), synth, Calibrate()]
    return compile_state(model, passes, calib="synthetic", synth_views=views, cache_dir=str(tmp_path))


def test_views_widen_synthetic_ranges_and_keep_the_scoring_samples(tmp_path):
    one, four = _calibrated(1, tmp_path), _calibrated(4, tmp_path)
    assert one.report.notes["calibration"]["synthetic"]["rows"] == 8
    assert four.report.notes["calibration"]["synthetic"] == {"samples": 8, "rows": 32,
                                                             "tensors": len(four.spec.act_tensors)}
    assert four.calib["input"].shape[0] == 8                         # scoring samples: no views
    assert one.ranges.keys() == four.ranges.keys()
    for t, r in one.ranges.items():                                  # a superset of rows: wider or equal
        assert four.ranges[t].lo <= r.lo and four.ranges[t].hi >= r.hi
    assert any(four.ranges[t].lo < r.lo or four.ranges[t].hi > r.hi for t, r in one.ranges.items())


def test_views_option_is_validated():
    with pytest.raises(UsageError, match="--synth-views 0"):
        QuantizeOptions(synth_views=0)


def test_cli_flag_reaches_calibration_and_zero_is_a_usage_error(tmp_path, capsys):
    import json

    import onnx

    from dfq_onnx.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(c_in=3, hw=8), path)
    common = ["-q", "quantize", str(path), "--synth-samples", "4", "--synth-steps", "2", "--cache-dir",
              str(tmp_path / "cache")]
    for views in (1, 3):
        out, report = tmp_path / f"q{views}.onnx", tmp_path / f"r{views}.json"
        assert main(common + ["-o", str(out), "--report", str(report), "--synth-views", str(views)]) == 0
        notes = json.loads(report.read_text())["notes"]["calibration"]["synthetic"]
        assert (notes["samples"], notes["rows"]) == (4, 4 * views)
    capsys.readouterr()
    assert main(common + ["-o", str(tmp_path / "bad.onnx"), "--synth-views", "0"]) == 2
    assert capsys.readouterr().err.strip() == "dfq-onnx: error: --synth-views 0: expected a positive number"
    assert not (tmp_path / "bad.onnx").exists()
