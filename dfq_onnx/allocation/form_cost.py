"""Latency of form groups for the allocator, and the default latency cap of a mixed plan.

Forms differ in speed by kernel and by shape (backends/form_latency.py): on ORT CPU at batch x sequence
in the hundreds the dynamic int8 form runs at 0.3-0.5x float, weight-only MatMulNBits at float speed; at
M = 1 the order flips. Each form group g gets a latency per candidate c:

    lat_g(c) = ms_g(c)                      from a measured table (`dfq-onnx profile-target` at the
                                            model's input shape): the model's own cost wins
             = cost(c) * macs_g             else the target's declared [forms] cost (relative cost per
                                            multiply-accumulate, 1.0 = float) times the group's MACs per
                                            token (a Gather lookup: 0)

Only form groups count (ops the target lists in [forms]): static Q/DQ groups keep their own rules.

Default cap (a mixed plan under a bits / size budget, no --latency-ms): the user asked for a smaller
model and expects it no slower than the default one, so

    sum_g lat_g(c_g)  <=  max( sum_g lat_g(default_g),  min over plans within the budget of sum_g lat_g )

-- no slower than the uniform default (W8) plan, unless the budget forces a slower plan, and then no
slower than the fastest plan that meets it (found by one more ILP: least latency under the budget).
Forms slower than the default (weight-only MatMulNBits at large M) then enter only where the budget
leaves room or where they are measured faster. `--latency-ms` replaces the cap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dfq_onnx.allocation.ilp import solve
from dfq_onnx.allocation.problem import plan_cost

Cand = tuple


@dataclass(frozen=True)
class Cap:
    limit: float               # cap on sum_g lat_g over the form groups (table ms, or relative MAC units)
    default: float             # the uniform default plan's
    fastest: float             # the least any plan within the budget needs
    unit: str                  # "ms" (measured table) or "float MACs" (declared cost)

    def describe(self) -> dict:
        return {"limit": self.limit, "default_plan": self.default, "fastest_in_budget": self.fastest,
                "unit": self.unit, "bound": "default plan" if self.default >= self.fastest
                else "fastest plan within the budget"}


def declared(form_groups, cands: dict, macs_per_token: dict, cost: dict) -> dict[str, dict[Cand, float]]:
    """lat_g(c) = cost(c) x MACs per token; None when a candidate of a group with MACs has no cost."""
    out = {}
    for g in form_groups:
        m = macs_per_token.get(g, 0)
        if m and any(c not in cost for c in cands[g]):
            return None
        out[g] = {c: (cost.get(c, 0.0) * m) for c in cands[g]}
    return out


def measured(form_groups, cands: dict, table) -> dict[str, dict[Cand, float]] | None:
    """lat_g(c) from a profile-target table, when it holds every candidate of every form group."""
    if table is None:
        return None
    out = {}
    for g in form_groups:
        row = table.groups.get(g, {})
        if any(c not in row for c in cands[g]):
            return None
        out[g] = {c: row[c] for c in cands[g]}
    return out


def default_cost(lat: dict, base: dict[str, Cand]) -> float:
    return float(sum(lat[g][base[g]] for g in lat))


def capped(p, budget, lat: dict, base: dict[str, Cand], unit: str, time_limit: float = 30.0):
    """(problem with the form groups' latency, budget with the default cap, Cap): module docstring."""
    q = dataclasses.replace(p, latency={g: dict(t) for g, t in lat.items()})
    quickest = solve(q, budget, time_limit=time_limit, minimize="latency_ms").choice
    fastest = plan_cost(q, quickest)["latency_ms"]
    default = default_cost(lat, base)
    limit = max(default, fastest)
    cap = Cap(limit * (1 + 1e-6) + 1e-12, default, fastest, unit)
    return q, dataclasses.replace(budget, latency_ms=cap.limit), cap
