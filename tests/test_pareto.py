"""Pareto sweep, default plan and the --max-drop search (plain numbers), and both end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from dfq_onnx.models import builders
from test_allocate import random_problem

import dfq_onnx
from dfq_onnx.allocation.ilp import solve
from dfq_onnx.allocation.pareto import default_point, max_drop, sweep
from dfq_onnx.allocation.problem import Budget, predicted_loss
from dfq_onnx.core.errors import InfeasibleBudgetError


def _additive(p):
    return lambda choice: predicted_loss(p, choice, use_pairs=True)


def test_sweep_is_monotone_in_bits_and_within_each_budget():
    p = random_problem(6, 3)
    points = sweep(p, lambda b: solve(p, b, use_pairs=True), _additive(p), reference=0.0, step=0.5)
    bits = [q["avg_weight_bits"] for q in points]
    assert bits == sorted(bits) and len(points) >= 3
    assert bits[0] == pytest.approx(2.0)
    for q in points:
        assert q["avg_weight_bits"] <= q["budget_avg_weight_bits"] + 1e-6
    preds = [q["predicted"] for q in points]
    assert all(a >= b - 1e-9 for a, b in zip(preds, preds[1:]))
    assert len({json.dumps(q["bits"], sort_keys=True) for q in points}) == len(points)


def test_default_point_is_the_cheapest_near_lossless_plan():
    pts = [{"avg_weight_bits": b, "measured": m} for b, m in [(2, 9.0), (3, 1.0), (4, 0.25), (5, 0.15),
                                                             (6, 0.11), (8, 0.1)]]
    assert default_point(pts)["avg_weight_bits"] == 5


def test_max_drop_steps_up_until_the_measured_loss_meets_the_target():
    p = random_problem(6, 5, pairs=False)
    calls = []

    def measure(choice):   # the real model is twice as sensitive as predicted
        calls.append(choice)
        return 0.1 + 2.0 * predicted_loss(p, choice, use_pairs=False)

    target = 0.1 + 2.0 * predicted_loss(p, {g: (4, 8) for g in p.groups}, use_pairs=False)
    res = max_drop(p, lambda allowance: solve(p, Budget(), use_pairs=False, max_loss=allowance,
                                               minimize="avg_weight_bits"), measure, 0.1, target)
    assert res.met and res.measured <= target
    assert len(res.steps) >= 2                          # the first plan missed, a step up met it
    assert res.steps[0]["measured"] > target
    assert res.steps[-1]["avg_weight_bits"] >= res.steps[0]["avg_weight_bits"]


def test_max_drop_below_the_activation_only_loss_is_infeasible():
    p = random_problem(3, 1, pairs=False)
    with pytest.raises(InfeasibleBudgetError, match="activations alone"):
        max_drop(p, lambda a: None, lambda c: 0.0, reference=0.5, target=0.1)


def test_pareto_and_max_drop_end_to_end(tmp_path):
    model = builders.conv_bn_relu_residual()
    curve = tmp_path / "curve.json"
    out, report = dfq_onnx.quantize(model, calib="noise", pareto=str(curve), progress=False,
                                    cache_dir=str(tmp_path / "c"), score_bits=(2, 4, 8),
                               synth_samples=16, synth_steps=4)
    onnx.checker.check_model(out, full_check=True)
    doc = json.loads(curve.read_text())
    assert len(doc["points"]) >= 2 and curve.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    measured = [q["measured"] for q in doc["points"]]
    chosen = report.notes["allocation"]
    assert chosen["measured_loss"] <= 2.0 * min(measured) + 1e-12
    target = float(np.median(measured))
    _, rep = dfq_onnx.quantize(model, calib="noise", max_drop=target, progress=False,
                               cache_dir=str(tmp_path / "c"), score_bits=(2, 4, 8),
                               synth_samples=16, synth_steps=4)
    alloc = rep.notes["allocation"]
    assert alloc["max_drop"]["met"] and alloc["measured_loss"] <= target
