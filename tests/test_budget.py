"""Work budgets of the forward-pass stages (backends/budget.py): the rules, Calibrate's budgeted views,
the activation decision's scoring rows and capped screening; outputs still independent of the chunk."""

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

import dfq_onnx
from dfq_onnx.backends import budget
from dfq_onnx.core import ir
from dfq_onnx.sensitivity.act_scoring import screen


def test_calibration_rows_drop_views_first_then_samples_down_to_min_rows():
    assert budget.calibration_rows(64, 8, 100, work=1e9) == 512              # small model: all views
    assert budget.calibration_rows(64, 8, 10**6, work=1e8) == 100            # 100 rows: samples + 36 views
    assert budget.calibration_rows(64, 8, 10**6, work=64e6) == 64            # every sample, no view
    assert budget.calibration_rows(64, 8, 10**6, work=17e6) == 17            # one row each overruns it
    assert budget.calibration_rows(64, 8, 10**9, work=1e8) == budget.MIN_ROWS   # never fewer than MIN_ROWS
    assert budget.calibration_rows(4, 8, 10**9, work=1e8) == 4               # nor than the samples given
    assert budget.calibration_rows(64, 1, 100, work=1e9) == 64


def test_scoring_rows_and_evaluations_stay_within_the_work():
    e = 10**6
    assert budget.scoring_rows(64, 100) == 64
    rows = budget.scoring_rows(64, e, work=1e8)                             # 1e8 // (1e6 * 12) = 8
    assert rows == 8 and budget.evaluations(rows, e, work=1e8) == 12
    assert budget.scoring_rows(64, 10**9, work=1e8) == budget.MIN_ROWS
    assert budget.evaluations(budget.MIN_ROWS, 10**9, work=1e8) == budget.MIN_EVALS_FLOOR


def test_a_broken_plan_extends_its_screen_only_where_the_work_buys_the_cap():
    """A broken plan screens BROKEN_EVALS x the cap further where the work budget set the cap (PP-OCRv4
    det at 640 x 640: 9 rows, 13 evaluations, 104 more), but not where the cap sits at its floor (ISNet at
    1024 x 1024: 8 rows of 167 M elements, the work buys 2 evaluations, the floor gives 3: main added 24)."""
    from dfq_onnx.passes.act_terms import BROKEN_EVALS, broken_evals

    det, isnet = 25_509_888, 167_421_184
    cap = budget.evaluations(9, det)
    assert cap == 13 and broken_evals(cap, {"rows": 9, "elements_per_row": det}) == BROKEN_EVALS * cap
    assert budget.evaluations(8, isnet) == budget.MIN_EVALS_FLOOR
    assert broken_evals(budget.MIN_EVALS_FLOOR, {"rows": 8, "elements_per_row": isnet}) == 0
    assert broken_evals(budget.MIN_EVALS_FLOOR, {"rows": 8, "elements_per_row": budget.WORK // 24}) == 8 * 3
    assert broken_evals(None, {"rows": 8, "elements_per_row": isnet}) == 0      # no cap: runs to the end
    assert broken_evals(5) == BROKEN_EVALS * 5                                   # no budget note: as before


class _AdditiveEvaluator:
    """D(S) = sum of the members' damages; counts distinct evaluations like the real Evaluator."""

    def __init__(self, damage: dict[str, float]):
        self.damage, self.evaluations, self._seen = damage, 0, set()

    def relative(self, config):
        key = frozenset(config)
        if key not in self._seen:
            self._seen.add(key)
            self.evaluations += 1
        return np.array([sum(self.damage[g] for g in config)] * 3)


def _recursive(ev, ids, threshold):
    d = ev.relative({a: 8 for a in ids})[0]
    if d <= threshold:
        return []
    if len(ids) == 1:
        return list(ids)
    h = len(ids) // 2
    return _recursive(ev, ids[:h], threshold) + _recursive(ev, ids[h:], threshold)


def test_uncapped_screening_finds_what_recursive_halving_finds():
    rng = np.random.default_rng(0)
    ids = [f"g{i}" for i in range(40)]
    damage = dict(zip(ids, rng.exponential(0.05, 40)))
    damage["g7"], damage["g31"] = 2.0, 1.5
    tested: dict[str, float] = {}
    found = screen(_AdditiveEvaluator(damage), ids, 8, 0.3, tested)
    assert found == _recursive(_AdditiveEvaluator(damage), ids, 0.3)
    assert {"g7", "g31"} <= set(found)


def test_capped_screening_splits_the_worst_sets_first():
    ids = [f"g{i}" for i in range(64)]
    damage = {g: 0.01 for g in ids}
    damage["g50"] = 5.0                    # the one strong outlier, late in graph order
    ev = _AdditiveEvaluator(damage)
    found = screen(ev, ids, 8, 0.1, {}, max_evals=13)
    assert found == ["g50"]                # 1 + 2 per level down to the single: 13 evaluations
    assert ev.evaluations <= 13
    ev = _AdditiveEvaluator(damage)
    assert screen(ev, ids, 8, 0.1, {}, max_evals=5) == [] and ev.evaluations <= 5


def _calibrated(tmp_path, work=None, batch=None, monkeypatch=None):
    if work is not None:
        monkeypatch.setattr(budget, "WORK", work)
        monkeypatch.setattr("dfq_onnx.passes.calibrate.calibration_rows",
                            lambda n, v, e: budget.calibration_rows(n, v, e, work))
    model = builders.conv_bn_relu(c_in=3, hw=8)
    synth = Synthesize(SynthesisOptions(samples=8, steps=2, population=1, progress=False,
                                        cache_dir=str(tmp_path)))
    passes = [Normalize(), FoldBatchNorm(), FindQuantGroups(), synth, Calibrate()]
    return compile_state(model, passes, calib="synthetic", calib_batch=batch, cache_dir=str(tmp_path))


def test_calibrate_budgets_its_views_and_an_explicit_count_is_kept(tmp_path, monkeypatch):
    small = _calibrated(tmp_path)
    assert small.report.notes["calibration"]["synthetic"]["rows"] == 64          # 8 samples x 8 views
    elements = small.report.notes["work"]["elements_per_row"]
    tight = _calibrated(tmp_path, work=20 * elements, monkeypatch=monkeypatch)
    assert tight.report.notes["calibration"]["synthetic"]["rows"] == 20
    other = _calibrated(tmp_path, work=20 * elements, batch=3, monkeypatch=monkeypatch)
    assert other.ranges == tight.ranges                                        # whatever the chunk


@pytest.mark.parametrize("batch", [1, 5])
def test_budgeted_decision_output_is_byte_identical_whatever_the_chunk(batch, monkeypatch):
    monkeypatch.setattr("dfq_onnx.passes.act_terms.scoring_rows", lambda n, e: 6)
    for module in ("act_precision", "act_terms"):
        monkeypatch.setattr(f"dfq_onnx.passes.{module}.evaluations", lambda r, e: 4)
    model = builders.conv_bn_relu_residual()
    opts = dict(calib="noise", calib_samples=13, progress=False, use_cache=False)
    out, report = dfq_onnx.quantize(model, calib_batch=batch, **opts)
    ref, _ = dfq_onnx.quantize(model, calib_batch=None, **opts)
    assert ir.serialize(out) == ir.serialize(ref)
    note = report.notes["activations"]["budget"]
    assert (note["rows"], note["max_evaluations"]) == (6, 4)
