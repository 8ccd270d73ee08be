"""Bit allocation ILP on hand-made tables (no onnx / onnxruntime imports)."""

from __future__ import annotations

import numpy as np
import pytest

from dfq_onnx.allocation.ilp import greedy, solve
from dfq_onnx.allocation.problem import Budget, Problem, brute_force, plan_cost, predicted_loss
from dfq_onnx.core.errors import InfeasibleBudgetError, UsageError

C3 = ((2, 8), (4, 8), (8, 8))


def random_problem(n: int, seed: int, pairs: bool = True, ties=()) -> Problem:
    rng = np.random.default_rng(seed)
    groups = tuple(f"g{i}" for i in range(n))
    loss = {g: {c: float(rng.random() * 10.0 / c[0]) for c in C3} for g in groups}
    params = {g: int(rng.integers(10, 1000)) for g in groups}
    macs = {g: int(rng.integers(1000, 10000)) for g in groups}
    table = {}
    if pairs:
        for i in range(n - 1):
            table[(groups[i], groups[i + 1])] = {(c, d): float(rng.normal(0, 0.5)) for c in C3 for d in C3}
    return Problem(groups, {g: C3 for g in groups}, loss, params, macs, table, ties=tuple(ties))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_pairs", [False, True])
def test_ilp_matches_brute_force(seed, use_pairs):
    p = random_problem(5, seed)
    budget = Budget(avg_weight_bits=3.0 + seed * 0.5)
    ilp, exact = solve(p, budget, use_pairs=use_pairs), brute_force(p, budget, use_pairs=use_pairs)
    assert ilp.predicted_loss == pytest.approx(exact.predicted_loss, abs=1e-9)
    assert ilp.status == "Optimal"


def test_bops_and_size_budgets_match_brute_force():
    p = random_problem(5, 11)
    size_w4 = plan_cost(p, {g: (4, 8) for g in p.groups})["size_mb"]
    budgets = (Budget(bops_ratio=0.6), Budget(size_mb=size_w4), Budget(avg_weight_bits=5.0, bops_ratio=0.7))
    for budget in budgets:
        assert solve(p, budget).predicted_loss == pytest.approx(brute_force(p, budget).predicted_loss)


def test_budget_is_respected_exactly():
    p = random_problem(6, 3)
    total = sum(p.params.values())
    for bits in (2.0, 3.3, 4.0, 6.1, 8.0):
        a = solve(p, Budget(avg_weight_bits=bits))
        assert plan_cost(p, a.choice)["avg_weight_bits"] <= bits * total + 1e-6


def test_ties_force_equal_candidates():
    p = random_problem(5, 2, ties=[("g0", "g3")])
    a = solve(p, Budget(avg_weight_bits=4.0))
    assert a.choice["g0"] == a.choice["g3"]
    assert a.predicted_loss == pytest.approx(brute_force(p, Budget(avg_weight_bits=4.0)).predicted_loss)


def test_infeasible_budget_names_option_and_range():
    p = random_problem(4, 0)
    with pytest.raises(InfeasibleBudgetError, match=r"--avg-weight-bits 1 .*feasible range 2 \.\. 8"):
        solve(p, Budget(avg_weight_bits=1.0))


def test_max_loss_mode_returns_cheapest_plan_within_target():
    p = random_problem(5, 4, pairs=False)
    target = predicted_loss(p, {g: (4, 8) for g in p.groups}, use_pairs=False)
    a = solve(p, Budget(), use_pairs=False, max_loss=target, minimize="avg_weight_bits")
    assert a.predicted_loss <= target + 1e-9
    assert plan_cost(p, a.choice)["avg_weight_bits"] <= plan_cost(p, {g: (4, 8) for g in p.groups})[
        "avg_weight_bits"]


def test_greedy_meets_budget_and_is_no_better_than_ilp():
    p = random_problem(6, 5, pairs=False)
    budget = Budget(avg_weight_bits=4.0)
    g, ilp = greedy(p, budget), solve(p, budget, use_pairs=False)
    assert plan_cost(p, g.choice)["avg_weight_bits"] <= 4.0 * sum(p.params.values()) + 1e-6
    assert ilp.predicted_loss <= predicted_loss(p, g.choice, use_pairs=False) + 1e-9


def test_missing_loss_is_a_usage_error():
    with pytest.raises(UsageError, match="g0"):
        Problem(("g0",), {"g0": C3}, {"g0": {(2, 8): 1.0}}, {"g0": 1})
