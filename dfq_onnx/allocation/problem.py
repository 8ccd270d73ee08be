"""Bit allocation as an integer linear program over plain numbers (no ONNX imports).

Variables: x[g,c] in {0,1} -- group g takes candidate c = (weight bits, activation bits); exactly one per
group. Objective (predicted loss at the model output):

    min  sum_g sum_c L_g(c) x[g,c]  +  sum_(g,h) sum_(c,c') C_gh(c,c') y[g,c,h,c']

Pair products y = x[g,c] x[h,c'] are linearized in the assignment (transportation) form, which is
tighter than McCormick because of the one-per-group constraints:

    sum_c' y[g,c,h,c'] = x[g,c]      sum_c y[g,c,h,c'] = x[h,c']      y >= 0

Budgets (any combination), all linear in x:
    avg weight bits   sum_g params_g w_c x[g,c]   <= B * sum_g params_g
    size (MB)         sum_g params_g w'_c / 8e6 x <= S            (weights only; w' = w plus the scales
                                                                   and zero points of block-wise forms)
    BOPs ratio        sum_g macs_g w_c a_c x      <= R * sum_g macs_g * 8 * 8   (relative to W8A8)
    latency (ms)      sum_g lat_g(c) x            <= T
Ties force groups to take the same candidate. Solved with PuLP's bundled CBC under a time limit; the
solver status is checked and an infeasible budget raises InfeasibleBudgetError with the feasible range.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from dfq_onnx.core import candidates
from dfq_onnx.core.errors import InfeasibleBudgetError, UsageError

Cand = tuple[int, int]


@dataclass(frozen=True)
class Problem:
    groups: tuple[str, ...]
    candidates: dict[str, tuple[Cand, ...]]
    loss: dict[str, dict[Cand, float]]
    params: dict[str, int]
    macs: dict[str, int] = field(default_factory=dict)
    pairs: dict[tuple[str, str], dict[tuple[Cand, Cand], float]] = field(default_factory=dict)
    latency: dict[str, dict[Cand, float]] = field(default_factory=dict)
    ties: tuple[tuple[str, str], ...] = ()
    storage: dict[str, dict[Cand, float]] = field(default_factory=dict)   # stored bits per weight when
    # they differ from w (block-wise scales and zero points, core/candidates.py); size only
    acts: object | None = None       # activation decisions (allocation/act_problem.py ActChoices)

    def __post_init__(self):
        for g in self.groups:
            if not self.candidates.get(g):
                raise UsageError(f"group '{g}' has no legal candidate")
            missing = [c for c in self.candidates[g] if c not in self.loss.get(g, {})]
            if missing:
                raise UsageError(f"group '{g}': no loss for candidate {candidates.name(missing[0])}")


@dataclass(frozen=True)
class Budget:
    avg_weight_bits: float | None = None
    size_mb: float | None = None
    bops_ratio: float | None = None
    latency_ms: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.avg_weight_bits, self.size_mb, self.bops_ratio,
                                           self.latency_ms))


@dataclass(frozen=True)
class Allocation:
    choice: dict[str, Cand]
    predicted_loss: float
    status: str
    solver_seconds: float = 0.0
    acts: dict[str, int] = field(default_factory=dict)   # activation group -> precision (decisions only)


def costs(p: Problem, g: str, c: Cand) -> dict[str, float]:
    """The budget resources candidate c of group g uses."""
    w, a = c[0], c[1]
    stored = p.storage.get(g, {}).get(c, w)
    return {"avg_weight_bits": p.params[g] * w, "size_mb": p.params[g] * stored / 8e6,
            "bops_ratio": p.macs.get(g, 0) * w * a, "latency_ms": p.latency.get(g, {}).get(c, 0.0)}


def limits(p: Problem, b: Budget) -> dict[str, float]:
    total_params = sum(p.params[g] for g in p.groups)
    w8a8 = sum(p.macs.get(g, 0) for g in p.groups) * 64
    out = {}
    if b.avg_weight_bits is not None:
        out["avg_weight_bits"] = b.avg_weight_bits * total_params
    if b.size_mb is not None:
        out["size_mb"] = b.size_mb
    if b.bops_ratio is not None:
        out["bops_ratio"] = b.bops_ratio * w8a8
    if b.latency_ms is not None:
        if not p.latency:
            raise UsageError("a latency budget needs a latency table (dfq-onnx profile-target)")
        out["latency_ms"] = b.latency_ms
    return out


def plan_cost(p: Problem, choice: dict[str, Cand]) -> dict[str, float]:
    """Resources a complete plan uses, in the units of `limits` (avg bits as parameter-weighted bits)."""
    total = {"avg_weight_bits": 0.0, "size_mb": 0.0, "bops_ratio": 0.0, "latency_ms": 0.0}
    for g, c in choice.items():
        for k, v in costs(p, g, c).items():
            total[k] += v
    return total


def predicted_loss(p: Problem, choice: dict[str, Cand], use_pairs: bool = True) -> float:
    loss = sum(p.loss[g][choice[g]] for g in p.groups)
    if use_pairs:
        loss += sum(t.get((choice[g], choice[h]), 0.0) for (g, h), t in p.pairs.items())
    return float(loss)


def _feasible_range(p: Problem, key: str) -> tuple[float, float]:
    lo = sum(min(costs(p, g, c)[key] for c in p.candidates[g]) for g in p.groups)
    hi = sum(max(costs(p, g, c)[key] for c in p.candidates[g]) for g in p.groups)
    return lo, hi


def _describe(p: Problem, key: str, value: float) -> str:
    total_params = sum(p.params[g] for g in p.groups) or 1
    w8a8 = (sum(p.macs.get(g, 0) for g in p.groups) * 64) or 1
    scale = {"avg_weight_bits": 1 / total_params, "bops_ratio": 1 / w8a8}.get(key, 1.0)
    return f"{value * scale:.4g}"


def check_feasible(p: Problem, b: Budget) -> None:
    """Raise InfeasibleBudgetError naming the budget and its feasible range (ignoring ties)."""
    names = {"avg_weight_bits": "--avg-weight-bits", "size_mb": "--size-mb", "bops_ratio": "--bops-ratio",
             "latency_ms": "--latency-ms"}
    for key, limit in limits(p, b).items():
        lo, hi = _feasible_range(p, key)
        if limit < lo - 1e-9:
            raise InfeasibleBudgetError(
                f"{names[key]} {_describe(p, key, limit)} is below the smallest plan the legal candidates "
                f"allow ({_describe(p, key, lo)}); feasible range {_describe(p, key, lo)} .. "
                f"{_describe(p, key, hi)}")


def _act_options(p: Problem):
    acts = p.acts
    if acts is None:
        return [{}]
    return [dict(zip(acts.groups, combo)) for combo in itertools.product(*(acts.candidates[k]
                                                                          for k in acts.groups))]


def brute_force(p: Problem, b: Budget, use_pairs: bool = True) -> Allocation:
    """Exhaustive search (tests and tiny problems only), activation decisions included."""
    lim = limits(p, b)
    best, best_loss = None, float("inf")
    for combo in itertools.product(*(p.candidates[g] for g in p.groups)):
        choice = dict(zip(p.groups, combo))
        if any(choice[g] != choice[h] for g, h in p.ties):
            continue
        used = plan_cost(p, choice)
        if any(used[k] > v + 1e-9 for k, v in lim.items()):
            continue
        for acts in _act_options(p):
            if p.acts is not None and not _act_ok(p, choice, acts):
                continue
            loss = predicted_loss(p, choice, use_pairs) + (p.acts.predicted(acts) if acts else 0.0)
            if loss < best_loss - 1e-12:
                best, best_loss = (choice, acts), loss
    if best is None:
        raise InfeasibleBudgetError("no plan satisfies the budget")
    return Allocation(best[0], best_loss, "Optimal", acts=best[1])


def _act_ok(p: Problem, choice: dict[str, Cand], acts: dict[str, int]) -> bool:
    if any(choice.get(g) == c and acts.get(k) == a for g, c, k, a in p.acts.illegal):
        return False
    return p.acts.allowance is None or p.acts.cost(acts) <= p.acts.allowance + 1e-9
