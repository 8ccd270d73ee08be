"""Extrapolated sensitivity widths (sensitivity/widths.py): fewer configurations, values that match
measured ones where the noise-power law holds, early stops, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.sensitivity import SensitivityOptions, prepare, scoring_data

from dfq_onnx.core.errors import UsageError
from dfq_onnx.sensitivity.widths import fill, ladder, noise_powers

BITS = (2, 3, 4, 5, 6, 8)


def _state(model, **options):
    return compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(),
                                 Calibrate()], act_bits=8, **options)


def _scoring(state, **kw):
    opts = SensitivityOptions(weight_bits=BITS, incontext=False, pairs=False, use_cache=False,
                              progress=False, **kw)
    samples, labels = scoring_data(state, opts)
    return prepare(state, opts, samples, labels).run()


def test_ladder_and_fill_reproduce_a_floor_plus_noise_power_law():
    assert ladder(BITS, 8) == (2, 4, 8) and ladder((2, 4, 8), 8) == (2, 4, 8) and ladder((4, 8), 8) == (4, 8)
    assert ladder((8,), 8) == (8,)
    noise = {b: 0.3 * 4.0 ** -b * (1 + 0.1 * b) for b in BITS}
    truth = {b: np.array([0.01, 0.011, 0.009]) + 7.0 * noise[b] for b in BITS}   # floor + c N(b)
    out = fill({b: truth[b] for b in (2, 4, 8)}, noise, BITS, anchor=4)
    for b in BITS:
        np.testing.assert_allclose(out[b], truth[b], rtol=1e-12)
    # stopped at the lowest width (negligible there): every width scaled by its noise power
    low = fill({2: truth[2]}, noise, BITS, anchor=4)
    np.testing.assert_allclose(low[6], truth[2] * noise[6] / noise[2])


def test_noise_power_falls_about_4x_per_bit():
    state = _state(builders.conv_bn_relu_residual(), calib_samples=16)
    noise = noise_powers(state.graph, state.spec, [g for g in state.groups if g.layers], BITS, state.target)
    for n in noise.values():
        assert all(n[a] > n[b] for a, b in zip(BITS, BITS[1:]))
        assert 3.0 < n[5] / n[6] < 6.0 and 10.0 < n[6] / n[8] < 25.0


def test_fewer_configurations_every_width_in_the_table():
    state = _state(builders.conv_bn_relu_residual(), calib_samples=32)
    full = _scoring(state).table()
    sparse = _scoring(state, extrapolate=True)
    table = sparse.table()
    groups = len(table.groups)
    # FP32 reference + groups x {2, 4, 8} + the all-base plan, against 1 + groups x 6 + 1
    assert full.evaluations == 1 + groups * len(BITS) + 1
    assert table.evaluations <= 1 + groups * 3 + 1 < full.evaluations
    assert set(table.phases) >= {"singles", "anchors", "tops"}
    for g in table.groups:
        assert set(table.singles[g]) == {(b, 8) for b in BITS}
    stopped = table.meta["widths"]["stopped_at"]
    assert sum(stopped.values()) == groups and table.meta["widths"]["extrapolated"] == [3, 5, 6]


def test_extrapolated_widths_match_measured_where_the_law_holds():
    """One linear layer, float activations, MSE on white Gaussian inputs: the loss of W + dW is
    tr(dW' S dW) / n, S the samples' covariance ~ I, so it is the weight noise power up to S."""
    state = _state(builders.matmul_bn(k=32, n=16), calib_samples=512)
    kw = {"metric": "mse", "quantize_activations": False, "shrink": 0.0}
    full = _scoring(state, **kw).table()
    sparse = _scoring(state, extrapolate=True, **kw).table()
    (g,) = full.groups
    for b in (3, 5, 6):
        assert sparse.singles[g][(b, 8)] == pytest.approx(full.singles[g][(b, 8)], rel=0.1)
    for b in (2, 4, 8):        # the measured widths are the full table's own values
        assert sparse.singles[g][(b, 8)] == full.singles[g][(b, 8)]


def test_negligible_at_the_lowest_width_stops_there_and_is_deterministic():
    state = _state(builders.conv_bn_relu_residual(), calib_samples=32)
    # a shrinkage no term survives: every group is negligible at 2 bits, so 4 and 8 are not run
    table = _scoring(state, extrapolate=True, shrink=1e9).table()
    assert table.evaluations == 1 + len(table.groups) + 1
    assert all(v == 0.0 for t in table.singles.values() for v in t.values())
    again = _scoring(state, extrapolate=True).table()
    once = _scoring(state, extrapolate=True).table()
    assert again.singles == once.singles and again.evaluations == once.evaluations


def test_extrapolation_needs_singles_only():
    with pytest.raises(UsageError, match="incontext=False"):
        SensitivityOptions(extrapolate=True)


def test_the_budgets_width_is_measured_and_the_line_runs_through_it():
    """An average-bits budget above the anchor adds the widest width below it to the ladder; widths
    between measured ones lie on the line through their neighbours, so where the loss bends away from
    one line (it saturates at low widths) the budget's widths are nearer the truth than the anchor's line."""
    assert ladder(BITS, 8, 6.0) == (2, 4, 5, 8) and ladder(BITS, 8, 7.0) == (2, 4, 6, 8)
    assert ladder(BITS, 8, 5.0) == ladder(BITS, 8, 4.5) == ladder(BITS, 8, 3.0) == (2, 4, 8)
    noise = {b: 4.0 ** -b for b in BITS}
    truth = {b: np.full(3, 0.05 + np.sqrt(noise[b])) for b in BITS}     # concave in the noise power
    three = fill({b: truth[b] for b in (2, 4, 8)}, noise, BITS, anchor=4)
    four = fill({b: truth[b] for b in (2, 4, 5, 8)}, noise, BITS, anchor=4)
    np.testing.assert_array_equal(four[5], truth[5])
    np.testing.assert_array_equal(four[3], three[3])          # below the anchor: the same line as before
    for b in (5, 6):
        assert abs(four[b][0] - truth[b][0]) < abs(three[b][0] - truth[b][0])
    t = (noise[6] - noise[8]) / (noise[5] - noise[8])
    np.testing.assert_allclose(four[6], truth[8] + (truth[5] - truth[8]) * t)


def test_scoring_with_a_budget_measures_its_width():
    state = _state(builders.conv_bn_relu_residual(), calib_samples=32)
    full = _scoring(state).table()
    table = _scoring(state, extrapolate=True, budget_bits=6.0).table()
    groups = len(table.groups)
    assert table.evaluations <= 1 + groups * 4 + 1 and "budget" in table.phases
    assert table.meta["widths"]["measured"] == [2, 4, 5, 8] and table.meta["widths"]["extrapolated"] == [3, 6]
    stopped = table.meta["widths"]["stopped_at"]
    assert set(stopped) == {"2", "4", "5", "8"} and sum(stopped.values()) == groups
    reached = [g for g in table.groups if full.singles[g][(4, 8)] > 0.0]
    assert reached and all(table.singles[g][(5, 8)] > 0.0 for g in reached)
