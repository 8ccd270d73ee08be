"""The activation part of the allocation ILP on plain numbers (no onnx, no onnxruntime)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dfq_onnx.allocation.act_problem import ActChoices, outliers
from dfq_onnx.allocation.ilp import solve
from dfq_onnx.allocation.problem import Budget, Problem, brute_force

F = 32


def _acts(allowance, pairs=None, rng=None) -> ActChoices:
    """Three groups: a (read by conv r1), b (written by r1, read by r2), c (read by nothing weighted)."""
    loss = {"a": {8: 0.5, 16: 0.01, F: 0.0}, "b": {8: 0.3, 16: 0.02, F: 0.0}, "c": {8: 0.2, F: 0.0}}
    if rng is not None:
        loss = {k: {a: (0.0 if a == F else float(rng.uniform(0, 1))) for a in t} for k, t in loss.items()}
    cands = {k: tuple(t) for k, t in loss.items()}
    takes = {"a": {8: (), 16: ("r1",), F: ("r1",)}, "b": {8: (), 16: ("r1", "r2"), F: ("r2",)},
             "c": {8: (), F: ()}}
    kernels = {("r1", 16): 10.0, ("r1", F): 30.0, ("r2", 16): 5.0, ("r2", F): 15.0}
    elem = {k: {a: (2.0 if a == 16 else 0.0) for a in cands[k]} for k in cands}
    return ActChoices(("a", "b", "c"), cands, loss, elem, kernels, takes, 8, allowance, pairs or {})


@pytest.mark.parametrize("allowance", [0.0, 12.0, 17.0, 40.0, None])
def test_ilp_matches_brute_force(allowance):
    p = Problem((), {}, {}, {}, acts=_acts(allowance, pairs={("a", "b"): {(8, 8): 0.4, (16, 8): 0.1}}))
    got, want = solve(p, Budget()), brute_force(p, Budget())
    assert got.acts == want.acts and got.predicted_loss == pytest.approx(want.predicted_loss)
    if allowance is not None:
        assert p.acts.cost(got.acts) <= allowance + 1e-9


def test_shared_kernel_is_paid_once():
    acts = _acts(None)
    assert acts.cost({"a": 16, "b": 16, "c": 8}) == 10.0 + 5.0 + 2.0 + 2.0   # r1 once, two 16-bit groups
    assert acts.cost({"a": 8, "b": 8, "c": F}) == 0.0                        # nothing weighted touched


def test_free_fix_is_always_taken_and_cost_breaks_ties():
    p = Problem((), {}, {}, {}, acts=_acts(0.0))
    assert solve(p, Budget()).acts == {"a": 8, "b": 8, "c": F}
    tie = _acts(100.0)
    tie = ActChoices(tie.groups, tie.candidates, {**tie.loss, "a": {8: 0.5, 16: 0.0, F: 0.0}},
                     tie.element_cost, tie.kernels, tie.takes, 8, 100.0)
    assert solve(Problem((), {}, {}, {}, acts=tie), Budget()).acts["a"] == 16    # 12 < 30 for the same loss


def test_random_problems_agree_with_brute_force():
    rng = np.random.default_rng(0)
    for allowance in itertools.islice(itertools.cycle([5.0, 20.0, 45.0]), 9):
        p = Problem((), {}, {}, {}, acts=_acts(allowance, rng=rng))
        assert solve(p, Budget()).predicted_loss == pytest.approx(brute_force(p, Budget()).predicted_loss)


def test_outliers_are_groups_above_the_weights_damage():
    loss = {"a": {8: 0.5}, "b": {8: 0.01}, "c": {8: 0.02}}
    assert outliers(loss, 8, 0.015) == ("a", "c")
