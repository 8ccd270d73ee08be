"""Turn the sensitivity table into a BitPlan under the user's budget (see `dfq_onnx.allocation.problem`).

Allocators: `ilp` (singles only, HAWQ-V3 style; the default), `ilp-pairs` (singles + pairwise terms,
CLADO style), `greedy` (Pandey et al.'s Pareto walk), `uniform` (the budget's bit-width for all).
Groups without weights, or that the table did not score, take the base candidate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from dfq_onnx.passes.act_precision import act_choices
from dfq_onnx.passes.act_precision import summary as act_summary

from dfq_onnx.allocation import form_cost, pareto
from dfq_onnx.allocation.costs import group_costs
from dfq_onnx.allocation.ilp import greedy, solve
from dfq_onnx.allocation.problem import (
    Allocation,
    Budget,
    Problem,
    check_feasible,
    costs,
    plan_cost,
    predicted_loss,
)
from dfq_onnx.backends import forms as forms_lib
from dfq_onnx.backends.forms import group_forms
from dfq_onnx.backends.latency import LatencyTable
from dfq_onnx.core import candidates
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import FLOAT_BITS, BitPlan, CompileState
from dfq_onnx.sensitivity.act_scoring import terms_from_dict

ALLOCATORS = ("ilp-pairs", "ilp", "greedy", "uniform")


def _frame(state: CompileState, scored, group_ids) -> tuple:
    """What both problems share: the `scored` candidates legal on the target, the groups of `group_ids`
    with weights, each group's candidates narrowed by its ops ([candidates.ops]; form groups: their
    [forms] candidates), their params and MACs, and the stored bits of block-wise candidates."""
    target = state.target
    forms = group_forms(state.graph, state.spec, state.groups, target, state.options.score_bits,
                        target.default_weight_bits)
    legal = [c for c in scored if c in target.pairs or candidates.is_form(c)]
    if not legal:
        raise UsageError(f"none of the scored candidates is legal on target '{target.name}'")
    params, macs = group_costs(state.graph, state.groups)
    groups = tuple(g for g in group_ids if params.get(g, 0) > 0)
    by_id = {g.id: g for g in state.groups}
    cands = {g: tuple(c for c in legal if c in forms[g][0]) if g in forms else tuple(
        c for c in legal if not candidates.is_form(c)
        and c in target.pairs_for([state.spec.layers[n].op for n in by_id[g].layers])) for g in groups}
    storage = {g: _stored_bits(state, by_id[g], cands[g]) for g in groups if g in forms}
    return legal, groups, cands, {g: params[g] for g in groups}, {g: macs[g] for g in groups}, storage


def _stored_bits(state: CompileState, group, cands) -> dict:
    """Stored bits per weight of each candidate of a form group (block scales and zero points included)."""
    tensors = state.graph.tensors()
    layers = [state.spec.layers[n] for n in group.layers]
    sizes = [(np.prod(tensors[x.weight].shape), forms_lib.reduction_length(x.op, tensors[x.weight].values))
             for x in layers]
    total = sum(n for n, _ in sizes) or 1
    return {c: sum(n * candidates.storage_bits(c, k) for n, k in sizes) / total for c in cands}


def _macs_per_row(state: CompileState, group_ids) -> dict[str, int]:
    """MACs per input row of each group: a MatMul (or a fused Attention's projection) on a constant
    W [K, N] does K * N per row; a Gather lookup none."""
    tensors, by_id = state.graph.tensors(), {g.id: g for g in state.groups}
    layers = {g: [state.spec.layers[n] for n in by_id[g].layers] for g in group_ids}
    return {g: int(sum(np.prod(tensors[x.weight].shape) for x in ls if x.op in forms_lib.COLUMN_WEIGHTS))
            for g, ls in layers.items()}


def build_problem(state: CompileState) -> Problem:
    table = state.sensitivity
    legal, groups, cands, params, macs, storage = _frame(state, table.candidates, table.groups)
    # Only damaging interactions (C > 0) reach the ILP. Negative terms mostly come from the loss saturating
    # when two low-bit layers each already break the output (D_ij < D_i + D_j); summed over a chain of
    # such pairs they cancel real damage, and the ILP buys exactly those chains (ResNet-20 at 3 bits:
    # predicted 0.32, measured 1.37, top-1 35.5 with them; BENCHMARKS.md, issue 5).
    pairs = {k: {cc: max(v, 0.0) for cc, v in t.items() if cc[0] in legal and cc[1] in legal}
             for k, t in table.pairs.items() if k[0] in groups and k[1] in groups}
    # no tie constraints needed here: FindQuantGroups already merged layers sharing weights/activations
    acts = None
    if getattr(table, "activations", None):
        acts = act_choices(state, terms_from_dict(table.activations))
        acts = dataclasses.replace(acts, illegal=illegal_pairs(state, acts, cands))
    return Problem(groups, cands, {g: {c: table.singles[g][c] for c in cands[g]} for g in groups},
                   params, macs, pairs, storage=storage, acts=acts)


def illegal_pairs(state: CompileState, acts, cands) -> tuple:
    """(weight group, candidate, activation group, bits) combinations a reader's op does not allow: a
    weighted reader of an activation group at a bits needs (w, a) legal for its op (float: any w)."""
    group_of = {layer: g.id for g in state.groups for layer in g.layers}
    out = []
    for k in acts.groups:
        ag = next(a for a in state.act_groups if a.id == k)
        for r in ag.readers:
            g, op = group_of.get(r), state.spec.layers[r].op
            for c in cands.get(g, ()):
                if candidates.is_form(c):     # a form layer reads its input float
                    continue
                out += [(g, c, k, a) for a in acts.candidates[k]
                        if a != FLOAT_BITS and (c[0], a) not in state.target.pairs_for([op])]
    return tuple(dict.fromkeys(out))


def cost_problem(state: CompileState) -> Problem:
    """The allocation problem without losses (all zero), before scoring: the candidates ScoreSensitivity
    will score (options' score bits legal with the activation bits), per group narrowed by its ops."""
    opts = state.options
    act = opts.act_bits or state.target.default_act_bits
    scored = [(b, act) for b in sorted(opts.score_bits)]
    scored += [c for op in state.target.forms for c in state.target.forms_for(op)]
    _, groups, cands, params, macs, storage = _frame(state, scored, [g.id for g in state.groups if g.layers])
    return Problem(groups, cands, {g: dict.fromkeys(cands[g], 0.0) for g in groups}, params, macs,
                   storage=storage)


class AllocateBits(Pass):
    """Analysis: choose (weight bits, activation bits) per group under the budget, or the cheapest plan
    meeting --max-drop (verified on the probe), optionally sweeping the Pareto curve
    (allocation/pareto.py)."""

    name = "AllocateBits"

    def __init__(self, budget: Budget, allocator: str = "ilp", max_drop: float | None = None,
                 time_limit: float = 30.0, pareto: bool = False, latency_table: str | None = None):
        if allocator not in ALLOCATORS:
            raise UsageError(f"--allocator {allocator}: expected one of {', '.join(ALLOCATORS)}")
        if not budget.any() and max_drop is None and not pareto:
            raise UsageError("AllocateBits needs a budget (--avg-weight-bits, --size-mb, --bops-ratio), "
                             "--max-drop or --pareto")
        if max_drop is not None and allocator in ("uniform", "greedy"):
            raise UsageError(f"--max-drop needs an ILP allocator (ilp or ilp-pairs), not '{allocator}'")
        if allocator == "uniform" and budget.any() and budget.avg_weight_bits is None:
            raise UsageError("--allocator uniform needs --avg-weight-bits")
        self.budget, self.allocator, self.max_drop, self.time_limit = budget, allocator, max_drop, time_limit
        self.pareto = pareto
        self.latency = LatencyTable.load(latency_table) if latency_table else None

    def _allocate(self, p: Problem, budget: Budget) -> Allocation:
        """The allocator's plan; uniform and greedy plans take the activation decisions of the default rule
        (the ILP over the activation groups alone), the ILPs decide them jointly with the weights."""
        if self.allocator in ("uniform", "greedy"):
            a = (Allocation(choice := self._uniform(p, budget), predicted_loss(p, choice, False), "uniform")
                 if self.allocator == "uniform" else greedy(p, budget))
            if p.acts is None:
                return a
            acts = solve(Problem((), {}, {}, {}, acts=p.acts), Budget(), time_limit=self.time_limit).acts
            return dataclasses.replace(a, acts=acts, predicted_loss=a.predicted_loss + p.acts.predicted(acts))
        return solve(p, budget, use_pairs=self.allocator == "ilp-pairs", time_limit=self.time_limit)

    def check(self, state: CompileState) -> None:
        """Before scoring: every group has a legal candidate, the latency table is this model's and
        target's, and the budget is within what the legal candidates allow."""
        p = cost_problem(state)
        if self.latency is not None:
            p = dataclasses.replace(p, latency=self.latency.for_problem(state.target.name, state.groups,
                                                                        p.groups))
        if self.budget.any():
            check_feasible(p, self.budget)
        if self.allocator == "uniform" and self.budget.avg_weight_bits is not None:
            self._uniform(p, self.budget)

    def run(self, state: CompileState) -> PassResult:
        p = build_problem(state)
        if self.latency is not None:
            p = dataclasses.replace(p, latency=self.latency.for_problem(state.target.name, state.groups,
                                                                        p.groups))
        table = state.sensitivity
        ref, notes = table.reference_loss, {}

        def measure(choice, acts=None) -> float:
            return state.meter({g: candidates.key(c) for g, c in choice.items()}, acts or {})

        acts: dict[str, int] = {}
        if self.pareto:
            state.pareto = pareto.sweep(p, lambda b: self._allocate(p, b), measure, ref)
            notes["pareto_points"] = len(state.pareto)
        if self.max_drop is not None:
            res = pareto.max_drop(
                p, lambda allowance: solve(p, self.budget, use_pairs=self.allocator == "ilp-pairs",
                                           time_limit=self.time_limit, max_loss=allowance,
                                           minimize="avg_weight_bits"),
                measure, ref, self.max_drop)
            choice, acts, status = res.choice, res.acts, "met" if res.met else "missed"
            notes["max_drop"] = {"target": self.max_drop, "measured": res.measured, "met": res.met,
                                 "steps": res.steps}
            if not res.met:
                state.report.warnings.append(f"--max-drop {self.max_drop:g}: no plan measured within it; "
                                             f"the most precise plan measures {res.measured:.4g}")
        elif self.budget.any():
            q, budget, cap = self._capped(state, p)
            a = self._allocate(q, budget)
            choice, acts, status = a.choice, a.acts, a.status
            if cap is not None:
                used = plan_cost(q, choice)["latency_ms"]
                notes["form_latency"] = {**cap.describe(), "plan": used}
        else:
            point = pareto.default_point(state.pareto)
            choice, status = {g: tuple(c) for g, c in point["bits"].items()}, "Pareto (near-lossless point)"
            acts = dict(point.get("acts", {}))
        base = table.base or (8, 8)
        bits = {g.id: choice.get(g.id, base) for g in state.groups}
        changed = {k: a for k, a in sorted(acts.items()) if p.acts is None or a != p.acts.base}
        state.plan = BitPlan(bits, acts=changed)
        used = plan_cost(p, choice)
        total = sum(p.params.values()) or 1
        avg = used["avg_weight_bits"] / total
        state.report.groups = [self._row(state, p, g, bits[g.id]) for g in state.groups]
        predicted = table.predict(bits, pairs=self.allocator == "ilp-pairs") + (
            p.acts.predicted(acts) if p.acts is not None and acts else 0.0)
        budget = {k: v for k, v in vars(self.budget).items() if v is not None}
        state.report.notes["allocation"] = {
            "allocator": self.allocator, "status": status, "avg_weight_bits": avg, "size_mb": used["size_mb"],
            "predicted_loss": predicted, "measured_loss": measure(choice, acts) if state.meter else None,
            "budget": budget, "max_drop": self.max_drop, "acts": changed, **notes}
        if p.acts is not None:
            state.report.notes["activations"] = act_summary(state, terms_from_dict(table.activations), p.acts,
                                                            changed)
        if self.latency is not None:
            state.report.notes["allocation"]["predicted_latency_ms"] = used["latency_ms"]
            state.report.notes["allocation"]["latency_overhead_ms"] = self.latency.overhead_ms
        return PassResult(False, f"{self.allocator}: {status}, avg weight bits {avg:.3f} over "
                                 f"{len(p.groups)} scored groups" + (f"; {len(changed)} activation groups "
                                                                     "changed" if changed else ""))

    def _capped(self, state: CompileState, p: Problem) -> tuple:
        """(problem, budget, Cap | None): the default latency cap on the form groups (allocation/
        form_cost.py) for the ILP allocators when no --latency-ms is given; else unchanged."""
        if self.budget.latency_ms is not None or self.allocator not in ("ilp", "ilp-pairs"):
            return p, self.budget, None
        forms = group_forms(state.graph, state.spec, state.groups, state.target, state.options.score_bits,
                            state.target.default_weight_bits)
        mine = [g for g in p.groups if g in forms]
        if not mine:
            return p, self.budget, None
        base = {g: forms[g][1] for g in mine}
        cands = {g: p.candidates[g] for g in mine}
        lat, unit = form_cost.measured(mine, cands, self.latency), "ms"
        if lat is None:
            lat, unit = form_cost.declared(mine, cands, _macs_per_row(state, mine),
                                           state.target.form_settings.get("cost", {})), "float MACs per row"
        if lat is None:
            state.report.warnings.append("no latency cap on the form layers: the target declares no [forms] "
                                         "cost for every candidate and no --latency-table covers them")
            return p, self.budget, None
        return form_cost.capped(p, self.budget, lat, base, unit, self.time_limit)

    @staticmethod
    def _uniform(p: Problem, budget: Budget) -> dict:
        lim_bits = budget.avg_weight_bits
        if lim_bits is None:
            raise UsageError("--allocator uniform needs --avg-weight-bits")
        choice = {}
        for g in p.groups:        # each group's widest candidate within the bits (one pair when all share)
            fit = [c for c in sorted(p.candidates[g], key=lambda c: -c[0]) if c[0] <= lim_bits + 1e-9]
            if not fit:
                raise UsageError(f"no uniform candidate fits --avg-weight-bits {lim_bits}")
            choice[g] = fit[0]
        return choice

    @staticmethod
    def _row(state: CompileState, p: Problem, g, bits) -> dict:
        table = state.sensitivity
        row = {"group": g.id, "layers": list(g.layers), "ops": list(g.ops), "params": g.params,
               "weight_bits": bits[0], "act_bits": bits[1]}
        if g.id in p.groups:
            c = costs(p, g.id, bits)
            row.update({"size_mb": c["size_mb"], "macs": p.macs[g.id],
                        "bops": c["bops_ratio"], "predicted_loss": table.singles[g.id].get(bits, 0.0)})
        return row
