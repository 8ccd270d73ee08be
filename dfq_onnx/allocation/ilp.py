"""PuLP model for `dfq_onnx.allocation.problem` (see its docstring for the formulation)."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import pulp

from dfq_onnx.allocation import act_problem
from dfq_onnx.allocation.problem import (
    Allocation,
    Budget,
    Problem,
    check_feasible,
    costs,
    limits,
    predicted_loss,
)
from dfq_onnx.core.errors import DfqError, InfeasibleBudgetError


def _solver(time_limit: float):
    """HiGHS (through highspy) when installed: 5-10x faster than CBC on these models; else bundled CBC.
    Both single-threaded, so the same problem gives the same plan."""
    if "HiGHS" in pulp.listSolvers(onlyAvailable=True):
        return pulp.HiGHS(msg=False, timeLimit=time_limit, threads=1)
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, threads=1)


@contextlib.contextmanager
def _quiet_stdout():
    """highspy prints a banner on fd 1 before its options apply; keep stdout clean for the CLI."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve(p: Problem, b: Budget, use_pairs: bool = True, time_limit: float = 30.0,
          max_loss: float | None = None, minimize: str | None = None) -> Allocation:
    """Least predicted loss under the budget; or, with `minimize` (a budget key), the cheapest plan
    (whose predicted loss stays within `max_loss`, if given)."""
    check_feasible(p, b)
    prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
    x = {(g, c): prob.add_variable(f"x_{i}_{j}", cat="Binary")
         for i, g in enumerate(p.groups) for j, c in enumerate(p.candidates[g])}
    for g in p.groups:
        prob += pulp.lpSum(x[g, c] for c in p.candidates[g]) == 1
    for g, h in p.ties:
        for c in p.candidates[g]:
            prob += x[g, c] == (x[h, c] if (h, c) in x else 0)
    loss = [p.loss[g][c] * x[g, c] for g in p.groups for c in p.candidates[g]]
    if use_pairs:
        loss += _pair_terms(prob, p, x)
    z = None
    if p.acts is not None and p.acts.groups:
        terms, z = act_problem.add_to_model(prob, p.acts, x)
        loss += terms
    for key, limit in limits(p, b).items():
        prob += pulp.lpSum(costs(p, g, c)[key] * x[g, c] for g in p.groups for c in p.candidates[g]) <= limit
    if max_loss is not None:
        prob += pulp.lpSum(loss) <= max_loss
    if minimize is not None:
        prob.setObjective(pulp.lpSum(costs(p, g, c)[minimize] * x[g, c]
                                     for g in p.groups for c in p.candidates[g]))
    else:
        prob.setObjective(pulp.lpSum(loss))
    start = time.perf_counter()
    with _quiet_stdout():
        status = prob.solve(_solver(time_limit))
    seconds = time.perf_counter() - start
    name = pulp.LpStatus[status]
    if name == "Infeasible":
        raise InfeasibleBudgetError("no plan satisfies the budget together with the tie constraints"
                                    + (" and the accuracy target" if max_loss is not None else ""))
    if name != "Optimal" and prob.sol_status != pulp.LpSolutionIntegerFeasible:
        raise DfqError(f"ILP solver finished with status '{name}' (time limit {time_limit}s)")
    choice = {g: next(c for c in p.candidates[g] if (x[g, c].value() or 0) > 0.5) for g in p.groups}
    hit_limit = seconds >= time_limit * 0.98   # solvers report their best plan as 'Optimal' at the limit
    status_name = "Optimal" if name == "Optimal" and not hit_limit else "Feasible (time limit)"
    acts = act_problem.read_choice(p.acts, z) if z is not None else {}
    loss = predicted_loss(p, choice, use_pairs) + (p.acts.predicted(acts) if acts else 0.0)
    return Allocation(choice, loss, status_name, seconds, acts)


def _pair_terms(prob, p: Problem, x) -> list:
    terms = []
    for k, ((g, h), table) in enumerate(sorted(p.pairs.items())):
        nz = {cc: v for cc, v in table.items() if v != 0.0}
        if not nz:
            continue
        y = {(c, d): prob.add_variable(f"y_{k}_{i}_{j}", lowBound=0)
             for i, c in enumerate(p.candidates[g]) for j, d in enumerate(p.candidates[h])}
        for c in p.candidates[g]:
            prob += pulp.lpSum(y[c, d] for d in p.candidates[h]) == x[g, c]
        for d in p.candidates[h]:
            prob += pulp.lpSum(y[c, d] for c in p.candidates[g]) == x[h, d]
        terms += [v * y[cd] for cd, v in nz.items() if cd in y]
    return terms


def greedy(p: Problem, b: Budget) -> Allocation:
    """Pandey et al.'s greedy Pareto walk: start at the most precise candidates and repeatedly take the
    step (one group one candidate cheaper) with the least loss increase per unit of resource saved,
    until the budget holds."""
    check_feasible(p, b)
    lim = limits(p, b)
    key = next(iter(lim)) if lim else "avg_weight_bits"
    order = {g: sorted(p.candidates[g], key=lambda c: -costs(p, g, c)[key]) for g in p.groups}
    choice = {g: order[g][0] for g in p.groups}

    def over() -> bool:
        used = {k: sum(costs(p, g, choice[g])[k] for g in p.groups) for k in lim}
        return any(used[k] > v + 1e-9 for k, v in lim.items())

    while over():
        best, best_ratio = None, float("inf")
        for g in p.groups:
            i = order[g].index(choice[g])
            if i + 1 >= len(order[g]):
                continue
            c, d = choice[g], order[g][i + 1]
            saved = costs(p, g, c)[key] - costs(p, g, d)[key]
            ratio = (p.loss[g][d] - p.loss[g][c]) / saved if saved > 0 else float("inf")
            if ratio < best_ratio:
                best, best_ratio = (g, d), ratio
        if best is None:
            raise InfeasibleBudgetError("greedy allocation cannot meet the budget")
        choice[best[0]] = best[1]
    return Allocation(choice, predicted_loss(p, choice), "Greedy")
