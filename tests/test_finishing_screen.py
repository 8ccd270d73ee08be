"""An activation screen the evaluation cap cut short is scored again on fewer rows (more evaluations in the
same work: backends/budget.finishing_rows, passes/act_precision.finishing)."""

from __future__ import annotations

import pytest
from dfq_onnx.models import act_builders
from dfq_onnx.passes import act_precision, act_terms

import dfq_onnx
from dfq_onnx.backends import budget
from dfq_onnx.sensitivity.act_scoring import ActTerms, cut_short, to_finish, unsplit


def test_finishing_rows_buy_the_evaluations_within_the_work():
    e = 6_300_000                                     # PP-OCRv5 rec's activation elements per row at 48 x 320
    assert budget.evaluations(32, e) == 14
    assert budget.finishing_rows(32, e, 54) == 8 and budget.evaluations(8, e) >= 54
    assert budget.finishing_rows(32, e, 20) == 23 and budget.evaluations(23, e) >= 20
    assert budget.finishing_rows(32, e, 500) == budget.MIN_ROWS          # never fewer
    assert budget.finishing_rows(9, 1000, 20) == 9                        # never more than it had


def _terms(screened: dict, undecided: int, groups: int = 8, evaluations: int = 5) -> ActTerms:
    return ActTerms(groups=tuple(f"a{i}" for i in range(groups)), bits=(8,), singles={}, weight_loss=0.1,
                    act_loss=1.0, screened=screened, undecided=undecided, evaluations=evaluations)


def test_the_evaluations_a_cut_screen_needs():
    """Sets above L_w the screen did not split need their halvings: a set of 4 two levels, 2 each."""
    every = ",".join(f"a{i}" for i in range(8))
    cut = _terms({every: 1.0, "a0,a1,a2,a3": 0.9, "a4,a5,a6,a7": 0.05}, undecided=4)
    assert unsplit(cut) == [4] and to_finish(cut) == 5 + 4
    assert not cut_short(cut)                          # half undecided is not most
    most = _terms({every: 1.0}, undecided=8, evaluations=3)
    assert cut_short(most) and to_finish(most) == 3 + 6


@pytest.mark.parametrize("needed, rows", [(30, 15), (56, 8), (60, None)])
def test_finishing_decides_from_the_budget(needed, rows):
    """Rows for the second screen only where they buy what the first showed it needs; token models
    (no rows per call: scored on a token budget) and finished screens are left."""
    every = ",".join(f"a{i}" for i in range(8))
    terms = _terms({every: 1.0}, undecided=8, evaluations=needed - 6)
    note = {"rows": 32, "elements_per_row": 6_300_000, "rows_per_call": 4}
    assert act_precision.finishing(terms, note) == rows
    assert act_precision.finishing(_terms({every: 0.05}, undecided=0), note) is None
    assert act_precision.finishing(terms, {"rows": 32, "elements_per_row": 6_300_000}) is None


def _capped(monkeypatch, first_cap: int):
    """The decision's budget on a tiny model: `first_cap` evaluations at the budget's rows, 60 at 8 rows."""
    monkeypatch.setattr(act_terms, "scoring_rows", lambda n, e: min(n, 32))
    for module in (act_precision, act_terms):
        monkeypatch.setattr(module, "evaluations", lambda rows, e: first_cap if rows > 8 else 60)
    monkeypatch.setattr(act_precision, "finishing_rows", lambda rows, e, needed: 8)


def test_a_screen_cut_short_is_scored_again_on_fewer_rows(tmp_path, monkeypatch):
    """The residual network with its outlier channel: 3 evaluations (the gate's two and one set) leave
    every group undecided; the second screen on 8 rows decides every group and finds the outliers the
    first could not reach."""
    _capped(monkeypatch, 3)
    _, report = dfq_onnx.quantize(act_builders.outlier_residual(blocks=6, scale=30.0), calib="noise",
                                  cache_dir=str(tmp_path), progress=False)
    notes = report.notes["activations"]
    first = notes["budget"]["first_screen"]
    assert first["rows"] > 8 and 2 * first["undecided_groups"] > notes["groups"]
    assert notes["budget"]["rows"] == 8 and notes["budget"]["undecided_groups"] == 0
    assert notes["outliers"] and first["evaluations_to_finish"] <= 60


def test_a_screen_that_finishes_is_scored_once(tmp_path, monkeypatch):
    _capped(monkeypatch, 60)
    _, report = dfq_onnx.quantize(act_builders.outlier_residual(blocks=6, scale=30.0), calib="noise",
                                  cache_dir=str(tmp_path), progress=False)
    notes = report.notes["activations"]
    assert "first_screen" not in notes["budget"] and notes["budget"]["undecided_groups"] == 0
    assert notes["budget"]["rows"] > 8
