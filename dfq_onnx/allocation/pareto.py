"""Pareto sweep of the bit allocation (`--pareto`), and the `--max-drop` search with verification.

Both work on plain numbers (an `allocate.Problem`) plus two callables: `allocate(budget) -> Allocation`
(the chosen allocator) and `measure(choice, acts) -> float`, the loss of a whole plan (weight candidates
and activation-group precisions) measured at the model output on the scoring samples (one ORT forward pass
on the probe; `passes/sensitivity.PlanMeter`).

Sweep: budgets of average weight bits from the smallest to the largest legal plan, in `step` bits; each
budget is allocated, equal plans are kept once, and every distinct plan is measured. The curve is the
list of points (budget, avg weight bits, size, BOPs ratio, predicted and measured loss, bits per group).

Default plan (written when `--pareto` is given without a budget): the cheapest point whose measured
loss is at most `NEAR_LOSSLESS` (2) times that of the most precise point -- "as small as possible while
staying near the best this target allows". (A geometric knee is ill-defined here: the loss falls by
orders of magnitude over the first bits and flattens slowly, so the knee lands where the model is still
broken.)

Max-drop: the cheapest plan (average weight bits) whose predicted loss <= X is measured; when the
measured loss misses X the allowance for the predicted terms is scaled down by the miss,
    allowance' = allowance * (X - ref) / (measured - ref) * 0.9      (ref: loss with FP32 weights)
and the plan re-solved, at most `max_steps` times; when no plan meets X, the most precise plan is taken
and the miss is reported.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

from dfq_onnx.allocation.problem import Allocation, Budget, Cand, Problem, plan_cost
from dfq_onnx.core.errors import InfeasibleBudgetError

Measure = Callable[..., float]     # (choice[, acts]) -> measured loss
NEAR_LOSSLESS = 2.0


def _point(p: Problem, choice: dict[str, Cand], budget: float | None, predicted: float,
           measured: float, acts: dict[str, int] | None = None) -> dict:
    used = plan_cost(p, choice)
    params = sum(p.params[g] for g in p.groups) or 1
    w8a8 = sum(p.macs.get(g, 0) for g in p.groups) * 64 or 1
    return {"budget_avg_weight_bits": budget, "avg_weight_bits": used["avg_weight_bits"] / params,
            "size_mb": used["size_mb"], "bops_ratio": used["bops_ratio"] / w8a8,
            "predicted": predicted, "measured": measured,
            "bits": {g: list(c) for g, c in sorted(choice.items())},
            "acts": dict(sorted((acts or {}).items()))}


def sweep(p: Problem, allocate: Callable[[Budget], Allocation], measure: Measure, reference: float,
          step: float = 0.25) -> list[dict]:
    """Pareto points over average-weight-bit budgets (see the module docstring), cheapest first."""
    params = sum(p.params[g] for g in p.groups) or 1
    lo = sum(min(c[0] for c in p.candidates[g]) * p.params[g] for g in p.groups) / params
    hi = sum(max(c[0] for c in p.candidates[g]) * p.params[g] for g in p.groups) / params
    budgets, b = [], lo
    while b < hi - 1e-9:
        budgets.append(round(b, 6))
        b += step
    budgets.append(round(hi, 6))
    points, seen = [], set()
    for budget in budgets:
        try:
            a = allocate(Budget(avg_weight_bits=budget + 1e-9))
        except InfeasibleBudgetError:
            continue
        key = (tuple(sorted(a.choice.items())), tuple(sorted(a.acts.items())))
        if key in seen:
            continue
        seen.add(key)
        points.append(_point(p, a.choice, budget, reference + a.predicted_loss, _measure(measure, a), a.acts))
    return points


def _measure(measure: Measure, a: Allocation) -> float:
    """`measure(choice)`, with the activation decisions when the allocation made some."""
    return measure(a.choice, a.acts) if a.acts else measure(a.choice)


def default_point(points: list[dict]) -> dict:
    """The plan written without a budget (see the module docstring)."""
    best = min(points[-1]["measured"], min(q["measured"] for q in points))
    return next(q for q in points if q["measured"] <= NEAR_LOSSLESS * best)


@dataclass(frozen=True)
class MaxDropResult:
    choice: dict[str, Cand]
    measured: float
    met: bool
    steps: list[dict]
    acts: dict[str, int] = field(default_factory=dict)


def max_drop(p: Problem, solve_with: Callable[[float], Allocation], measure: Measure, reference: float,
             target: float, max_steps: int = 6) -> MaxDropResult:
    """Cheapest plan whose measured loss is <= target (see the module docstring)."""
    allowance = target - reference
    if allowance < 0:
        raise InfeasibleBudgetError(
            f"--max-drop {target:.4g}: quantizing the activations alone already costs {reference:.4g} "
            f"(weights in FP32); give a value above it")
    steps = []
    for _ in range(max_steps):
        a = solve_with(allowance)
        measured = _measure(measure, a)
        avg = _point(p, a.choice, None, 0.0, 0.0)["avg_weight_bits"]
        steps.append({"allowance": allowance, "predicted": reference + a.predicted_loss,
                      "measured": measured, "avg_weight_bits": avg})
        if measured <= target:
            return MaxDropResult(a.choice, measured, True, steps, a.acts)
        allowance *= max(min((target - reference) / max(measured - reference, 1e-12), 1.0) * 0.9, 0.05)
    best = {g: max(p.candidates[g], key=lambda c: (c[0], c[1])) for g in p.groups}
    measured = measure(best)
    return MaxDropResult(best, measured, measured <= target, steps)


def plot_png(points: list[dict], chosen: dict | None = None, title: str = "") -> bytes:
    """The curve as a PNG: measured and predicted loss vs average weight bits."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    xs = [q["avg_weight_bits"] for q in points]
    ax.plot(xs, [q["measured"] for q in points], "o-", label="measured (probe, scoring samples)")
    ax.plot(xs, [q["predicted"] for q in points], "x--", label="predicted (sensitivity table)")
    if chosen is not None:
        ax.plot([chosen["avg_weight_bits"]], [chosen["measured"]], "r*", markersize=14, label="written plan")
    if all(q["measured"] > 0 and q["predicted"] > 0 for q in points):
        ax.set_yscale("log")
    ax.set_xlabel("average weight bits (parameter-weighted)")
    ax.set_ylabel("output loss vs FP32")
    ax.set_title(title or "Pareto curve")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
