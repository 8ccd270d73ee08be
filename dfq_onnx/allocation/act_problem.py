"""Activation precision in the allocation ILP: variables, cost and the default rule (plain numbers).

Variables, besides the weight candidates x[g,c] of `problem`:

    z[k,a]   in {0,1}   activation group k takes precision a (bits, or 32 = float); one per group
    u[r,a]   in [0,1]   weighted node r runs at precision a instead of its integer kernel:
                        u[r,a] >= z[k,a] for every group k whose precision a takes r's kernel away
                        (its readers; its writers unless the target keeps an integer kernel with a float
                        output, `float_output_ops`)

Objective terms:    sum_k sum_a L_k(a) z[k,a]  (+ pair terms A_kl(a,a') linearized like the weight pairs)
with L_k(a) = A_k(a) - A_k(base), the change of the predicted loss from the base bits (<= 0 above them),
so that reference + weight terms + activation terms predicts a whole plan (reference: every activation
at the base bits).
Cost (relative to one FP32 multiply-accumulate, the unit of the target's [candidates] cost):

    cost = sum_(r,a) work_r (cost(w,a) - cost(w,base)) u[r,a]  +  sum_(k,a) elements_k elem_cost(a) z[k,a]

work_r = MACs of weighted node r per sample, cost(w, a) the target's [candidates] cost of the pair (w the
default weight bits; a node touched at two precisions pays both, an over-estimate); elem_cost: the
per-element price of the precision's Q/DQ kernels that do not fuse (16-bit on ORT CPU). Legality: a
weighted reader of group k with weight candidate w needs (w, a) legal on the target (float: any w,
weight-only quantization), as constraints x[g,(w,.)] + z[k,a] <= 1.

Default rule (no budget, `outliers`): a group is a decision only when its A8 damage alone exceeds the
damage of every weight at the default bits together, A_k(base) > L_w ("a single activation quantizer
may not cost the output more than all W8 weights"); the others stay at the base bits. The decisions
then minimize the predicted loss within an activation-cost allowance:

    cost <= share * cost(base plan),     cost(base plan) = sum_r work_r cost_int

with `share` the target's `[activation] cost_allowance` (a policy: how much slower than the all-base
plan the default may get); moves that cost nothing are always available.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulp

Cand = tuple[int, int]


@dataclass(frozen=True)
class ActChoices:
    groups: tuple[str, ...]                          # decision groups
    candidates: dict[str, tuple[int, ...]]           # legal precisions per group
    loss: dict[str, dict[int, float]]                # L_k(a) = A_k(a) - A_k(base) (float: -A_k(base))
    element_cost: dict[str, dict[int, float]]        # per group: elements x element cost at a
    kernels: dict[tuple[str, int], float]            # (node, a) -> work x (cost(w, a) - cost(w, base))
    takes: dict[str, dict[int, tuple[str, ...]]]     # group -> a -> nodes whose kernel a takes away
    base: int = 8
    allowance: float | None = None                   # cost bound (None: unbounded)
    pairs: dict[tuple[str, str], dict[tuple[int, int], float]] = field(default_factory=dict)
    illegal: tuple[tuple[str, Cand, str, int], ...] = ()   # (weight group, c, act group, a) excluded

    def cost(self, choice: dict[str, int]) -> float:
        """The activation cost of a complete choice (group -> precision)."""
        lost = {(r, a) for k, a in choice.items() for r in self.takes.get(k, {}).get(a, ())}
        return sum(self.kernels[r] for r in lost) + sum(self.element_cost[k][a] for k, a in choice.items())

    def predicted(self, choice: dict[str, int]) -> float:
        loss = sum(self.loss[k][choice[k]] for k in self.groups)
        return loss + sum(t.get((choice[k], choice[m]), 0.0) for (k, m), t in self.pairs.items()
                          if k in choice and m in choice)


def outliers(loss: dict[str, dict[int, float]], base: int, weight_loss: float) -> tuple[str, ...]:
    """Groups whose damage at the base bits alone exceeds the weights' damage together (the default rule)."""
    return tuple(k for k, t in loss.items() if t.get(base, 0.0) > weight_loss)


def add_to_model(prob: pulp.LpProblem, acts: ActChoices, x: dict) -> tuple[list, dict]:
    """Add z, u and the constraints to `prob`; returns (objective terms, z variables)."""
    z = {(k, a): prob.add_variable(f"z_{i}_{j}", cat="Binary")
         for i, k in enumerate(acts.groups) for j, a in enumerate(acts.candidates[k])}
    for k in acts.groups:
        prob += pulp.lpSum(z[k, a] for a in acts.candidates[k]) == 1
    u = {ra: prob.add_variable(f"u_{i}", lowBound=0, upBound=1) for i, ra in enumerate(sorted(acts.kernels))}
    for k in acts.groups:
        for a in acts.candidates[k]:
            for r in acts.takes.get(k, {}).get(a, ()):
                prob += u[r, a] >= z[k, a]
    for g, c, k, a in acts.illegal:
        if (g, c) in x and (k, a) in z:
            prob += x[g, c] + z[k, a] <= 1
    cost = [acts.kernels[r] * u[r] for r in u] + [
        acts.element_cost[k][a] * z[k, a] for k in acts.groups for a in acts.candidates[k]]
    if acts.allowance is not None:
        prob += pulp.lpSum(cost) <= acts.allowance
    terms = [acts.loss[k][a] * z[k, a] for k in acts.groups for a in acts.candidates[k]]
    terms += [tie_break(acts) * c for c in cost]    # among equal predicted losses, the cheaper plan
    for n, ((k, m), table) in enumerate(sorted(acts.pairs.items())):
        for (a, b), v in table.items():
            if v > 0.0 and (k, a) in z and (m, b) in z:     # damaging interactions only (as the weights)
                y = prob.add_variable(f"w_{n}_{a}_{b}", lowBound=0)
                prob += y >= z[k, a] + z[m, b] - 1
                terms.append(v * y)
    return terms, z


def tie_break(acts: ActChoices) -> float:
    """Weight of the cost in the objective: a millionth of the largest loss over the largest cost, so it
    only orders plans whose predicted losses are equal (A16 and float both below the measurement noise)."""
    top_loss = max((abs(v) for t in acts.loss.values() for v in t.values()), default=0.0)
    top_cost = sum(acts.kernels.values()) + sum(max(t.values(), default=0.0)
                                                for t in acts.element_cost.values())
    return 1e-6 * top_loss / top_cost if top_cost > 0 and top_loss > 0 else 0.0


def read_choice(acts: ActChoices, z: dict) -> dict[str, int]:
    return {k: next(a for a in acts.candidates[k] if (z[k, a].value() or 0) > 0.5) for k in acts.groups}
