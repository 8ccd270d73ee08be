"""Choose A8 / A16 / float per activation group for the uniform plan (the default without a budget).

    W8 weights; A8 where a group costs nothing measurable at the output; A16 / float only where the
    output loss says so and the target's cost allows.

Measured on one activation probe (dfq_onnx/sensitivity/act_scoring.py) on the scoring samples: the
weights' damage at the default bits L_w, the outlier groups (damage at A8 alone > L_w, found by group
testing) and their damage at each precision; the ILP (allocation/act_problem.py) then minimizes the
predicted loss of the outliers' choices within the target's activation-cost allowance
([activation] cost_allowance x the all-A8 plan's cost, relative to FP32 multiply-accumulates). Groups
that are not outliers stay at the target's default bits.

A broken all-A8 plan (L_act > BROKEN x L_w, 16x: sensitivity/act_scoring.py's joint check) is the
exception to the allowance: its screening may run BROKEN_EVALS x its evaluation cap further (not where
that cap sits at its floor: `budget.broken_evaluations`), and the
outliers the joint check measured are put back to A16 / float worst-first, past the allowance, until the
whole plan fits BROKEN x L_w (the report's `activations.joint`). Accuracy first there: an output that
the activations destroy is not a latency trade-off (PP-PicoDet layout: 33.7 -> 81.1 % of FP32's boxes
kept, 0.40 -> 0.57 of FP32's latency; BENCHMARKS.md, session 16). Where every output is read by its
argmax, a plan the ratio calls broken is read for the task first (act_scoring's task reading): one that
keeps FP32's decisions is not broken (CREPE full: 44x with its pitches kept; session 23).

With a budget, ScoreSensitivity scores the same terms and AllocateBits decides them jointly with the
weights (passes/allocate.py).

Work budget (`backends.budget`): on float-input models the decision scores on `scoring_rows` of its
samples and its gate + screening stop after `evaluations` of them, so
rows x activation elements x evaluations stays within the stage's budget; groups the screening could
not reach keep the default bits (the report's `activations.budget`). Where that cap left most groups
undecided, the decision is scored again on `finishing_rows` (fewer rows, more evaluations in the same
work; `budget.first_screen` keeps the first screen's figures): "no outlier" then means none was found,
not that most groups were never looked at. The measurements (the probe's evaluators, the rows and cap
the budget buys, the terms through the cache) are in passes/act_terms.py.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs
from dfq_onnx.passes.act_terms import broken_evals, cached_terms, plan_scoring

from dfq_onnx.allocation.act_problem import ActChoices, outliers
from dfq_onnx.allocation.costs import layer_macs
from dfq_onnx.allocation.ilp import solve
from dfq_onnx.allocation.problem import Budget, Problem
from dfq_onnx.backends.act_precision import touched
from dfq_onnx.backends.budget import evaluations, finishing_rows
from dfq_onnx.backends.memory import release
from dfq_onnx.core import model_files
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import FLOAT_BITS, BitPlan, CompileState
from dfq_onnx.sensitivity.act_scoring import (
    BROKEN,
    ActTerms,
    broken,
    cut_short,
    joint_bound,
    switchable,
    to_finish,
)
from dfq_onnx.sensitivity.decisions import keeps_decisions
from dfq_onnx.sensitivity.evaluator import Evaluator

log = logging.getLogger(__name__)


def decides(state: CompileState) -> bool:
    """Whether activation precision is a decision: the target offers choices and --act-bits is not given."""
    return state.options.act_bits is None and bool(switchable(state.act_groups))


def finishing(terms: ActTerms, budget: dict) -> int | None:
    """Scoring rows for a second screen when the first, on float inputs, left most groups undecided at
    its evaluation cap (`act_scoring.cut_short`): the most rows whose cap covers `act_scoring.to_finish`
    (`budget.finishing_rows`); None when it finished, or when even MIN_ROWS rows cannot buy that many
    evaluations (a second screen cut short again would cost the work twice for little; module
    docstring)."""
    if "rows_per_call" not in budget or not cut_short(terms):
        return None
    needed, elements = to_finish(terms), budget["elements_per_row"]
    rows = finishing_rows(budget["rows"], elements, needed)
    return rows if rows < budget["rows"] and evaluations(rows, elements) >= needed else None


def unsearched(terms: ActTerms, budget: dict) -> bool:
    """A plan the ratio calls broken (and the task reading does not keep) whose outlier groups the work
    budget left unsearched: a capped screen with no extension (`broken_evals`: the cap at its floor)."""
    cap = budget.get("max_evaluations") if budget else None
    return (cap is not None and broken(terms.act_loss, terms.weight_loss)
            and not keeps_decisions(terms.decisions) and not terms.joint and broken_evals(cap, budget) == 0)


def joint_choice(terms: ActTerms, acts: ActChoices) -> dict[str, int]:
    """The joint check's floats (act_scoring): its shortest prefix that fits BROKEN x L_w, else the prefix
    with the lowest measured loss; only precisions the decision allows the group (`acts.candidates`)."""
    if not terms.joint:
        return {}
    bound = joint_bound(terms.weight_loss)
    fits = [i for i, (_, _, v) in enumerate(terms.joint) if v <= bound]
    end = fits[0] if fits else min(range(len(terms.joint)), key=lambda i: (terms.joint[i][2], i))
    return {k: a for k, a, _ in terms.joint[:end + 1] if a in acts.candidates.get(k, ())}


def ilp_choice(acts: ActChoices) -> dict[str, int]:
    """The ILP's precisions for the outlier groups of `acts` that leave the base bits."""
    alloc = solve(Problem((), {}, {}, {}, acts=acts), Budget())
    return {k: a for k, a in alloc.acts.items() if a != acts.base}


def timed(state: CompileState) -> bool:
    """Whether the chosen plan's cost is measured after the decision (KeepFloatChosen): KeepFloat timed
    the all-integer plan on the target's runtime and it paid. There the outliers the screen found are
    chosen without the cost model's allowance, and KeepFloatChosen times the plan against the all-base
    plan: within the allowance measured it stays, beyond it the longest prefix of the outliers (by what
    each buys in the chosen plan on the probe) that times within it (passes/outlier_fallback.py), else the
    allowance's choice."""
    from dfq_onnx.passes.keep_float import measured_pays

    return measured_pays(state)


def node_work(state: CompileState) -> dict[str, int]:
    """MACs per sample of every weighted quantized node (a dynamic dimension counts 1)."""
    nodes = {node_label(n): n for n in state.graph.nodes}
    return {name: layer_macs(nodes[name], symbolic=1) for name, layer in state.spec.layers.items()
            if layer.role == "weighted"}


def act_choices(state: CompileState, terms: ActTerms, allowance: bool = True) -> ActChoices:
    """The ILP's activation part for the outlier groups of `terms` (module docstring)."""
    target, base = state.target, state.target.default_act_bits
    w = target.default_weight_bits
    cost_int = target.cost.get((w, base), 1.0)
    work = node_work(state)
    by_id = {ag.id: ag for ag in state.act_groups}
    groups = outliers(terms.singles, base, terms.weight_loss)
    cands, loss, elem, takes = {}, {}, {}, {}
    for k in groups:
        ag = by_id[k]
        legal = [a for a in ag.choices if a == FLOAT_BITS or all(
            (w, a) in target.pairs_for([state.spec.layers[r].op]) for r in ag.readers
            if state.spec.layers[r].role == "weighted")]
        cands[k] = tuple(a for a in legal if a == base or a == FLOAT_BITS or a in terms.singles[k])
        base_loss = terms.singles[k][base]
        loss[k] = {a: (0.0 if a == FLOAT_BITS else terms.singles[k][a]) - base_loss for a in cands[k]}
        elem[k] = {a: ag.elements * target.act_element_cost.get(a, 0.0) for a in cands[k]}
        keep = target.float_output_ops
        takes[k] = {a: () if a == base else touched(ag, state.spec.layers, keep if a == FLOAT_BITS else ())
                    for a in cands[k]}
    kernels = {(r, a): work[r] * max(target.cost.get((w, a), 1.0) - cost_int, 0.0)
               for k in groups for a in cands[k] for r in takes[k][a]}
    limit = None
    if allowance:
        limit = target.act_cost_allowance * sum(work.values()) * cost_int
    pairs = {km: t for km, t in terms.pairs.items() if km[0] in groups and km[1] in groups}
    return ActChoices(groups, cands, loss, elem, kernels, takes, base, limit, pairs)


class ChooseActivationPrecision(Pass):
    """Analysis: A8 / A16 / float per activation group where the output loss says so and the target's
    cost allows (the uniform plan's activation decisions)."""

    name = "ChooseActivationPrecision"

    def __init__(self, samples: int | None = None, metric: str = "auto", use_cache: bool = True,
                 cache_dir: str | None = None):
        self.samples, self.metric, self.use_cache, self.cache_dir = samples, metric, use_cache, cache_dir

    def run(self, state: CompileState) -> PassResult:
        if not decides(state):
            return PassResult(False, "no activation group has a choice (target or --act-bits)")
        skip = self._skip(state)
        if skip:
            state.report.notes["activations"] = {"skipped": skip}
            return PassResult(False, f"skipped: {skip}")
        terms, ev, budget = self._scored(state)
        if unsearched(terms, budget):
            a, ratio = state.target.default_act_bits, terms.act_loss / max(terms.weight_loss, 1e-30)
            log.warning("the all-A%d plan is broken (output loss %.3g, %.0fx the W8 weights' %.3g) and its "
                        "outlier groups were not searched: one evaluation of its %d scoring rows is past the "
                        "work budget; kept all-A%d (calibration ranges holding rare extremes -- a few "
                        "pixels far above the rest -- break it; the synthetic samples' ranges may not)",
                        a, terms.act_loss, ratio, terms.weight_loss, budget["rows"], a)
        acts = act_choices(state, terms)
        chosen = ilp_choice(acts)
        joint = joint_choice(terms, acts)
        for k, a in joint.items():          # a broken plan: accuracy before the cost allowance
            chosen[k] = max(chosen.get(k, acts.base), a)
        priced = chosen if not joint and timed(state) else None
        if priced is not None:              # the outliers' cost measured, not priced (KeepFloatChosen)
            chosen = ilp_choice(act_choices(state, terms, allowance=False))
        notes = summary(state, terms, acts, chosen)
        if priced is not None and chosen != priced:
            past = sorted(k for k in chosen if chosen[k] != priced.get(k))
            notes["measured_cost"] = {"priced": dict(sorted(priced.items())), "past_allowance": past}
        if terms.joint:
            steps = [{"group": k, "precision": a, "loss": v} for k, a, v in terms.joint]
            notes["joint"] = {"factor": BROKEN, "bound": joint_bound(terms.weight_loss),
                              "applied": sorted(joint), "measured": steps}
        if terms.decisions is not None:
            notes["decisions"] = {**terms.decisions, "factor": BROKEN}
        if budget:
            notes["budget"] = {**budget, "undecided_groups": terms.undecided}
        if ev is not None:
            state.forward_passes += ev.forward_passes
            notes["measured"] = measured(state, ev, chosen)
            if chosen and notes["measured"]["chosen"] > notes["measured"]["all_base"]:
                # the per-group terms add up wrongly here (the groups interact): the measured plan wins
                notes["reverted"] = f"chosen plan measured worse than all-A{acts.base}: kept all-A{acts.base}"
                for o in notes["outliers"].values():
                    o["proposed"], o["choice"] = o["choice"], acts.base
                chosen = {}
        del ev                 # the probe sessions and the prefix cache: freed before the next pass
        release()
        state.plan = BitPlan(state.plan.bits, acts=dict(sorted(chosen.items())))
        state.report.notes["activations"] = notes
        names = ", ".join(f"{k}:{'float' if a == FLOAT_BITS else f'A{a}'}" for k, a in chosen.items())
        return PassResult(False, f"{len(acts.groups)} outlier groups of {len(terms.groups)}; "
                                 f"{len(chosen)} changed" + (f" ({names})" if names else ""))

    def _scored(self, state: CompileState) -> tuple[ActTerms, Evaluator | None, dict]:
        """The activation terms within the work budget; again on `finishing` rows where the evaluation cap
        cut the screen short (`budget.first_screen` keeps the first screen's figures)."""
        samples, labels, cap, batch, budget, key = plan_scoring(state, self.samples, self.metric)
        terms, ev = cached_terms(state, samples, labels, self.metric, key, self.use_cache, self.cache_dir,
                                 cap, batch, budget)
        rows = finishing(terms, budget)
        if not rows:
            return terms, ev, budget
        first = {"rows": budget["rows"], "max_evaluations": cap, "undecided_groups": terms.undecided,
                 "evaluations_to_finish": to_finish(terms)}
        del ev
        release()
        samples, labels, cap, batch, budget, key = plan_scoring(state, self.samples, self.metric, rows)
        terms, ev = cached_terms(state, samples, labels, self.metric, key, self.use_cache, self.cache_dir,
                                 cap, batch, budget)
        return terms, ev, {**budget, "first_screen": first}

    @staticmethod
    def _skip(state: CompileState) -> str | None:
        """Why the decision is not measured: no samples to measure it on (--calib analytic runs no forward
        pass), or a model too large for one protobuf (the probe is a model of the same size)."""
        if state.options.calib == "analytic":
            return "--calib analytic runs no forward pass; every activation group keeps the default bits"
        if _constant_bytes(state.graph) > model_files.TWO_GB // 2:
            return "model above 1 GB: activation precision not scored; every group keeps the default bits"
        return None


def _constant_bytes(graph) -> int:
    total = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant):
            shape, dtype = getattr(t, "shape", None), getattr(t, "dtype", None)
            total += int(np.prod(shape or [0])) * (np.dtype(dtype).itemsize if dtype is not None else 4)
    return total


def measured(state: CompileState, ev: Evaluator, chosen: dict[str, int]) -> dict:
    """Loss vs FP32 of the all-base plan and of the chosen one (W at the default bits), on the probe."""
    acts = {ag.id: state.target.default_act_bits for ag in switchable(state.act_groups)}
    before = float(ev.loss(acts)[0])
    after = float(ev.loss({**acts, **{k: None if a == FLOAT_BITS else a for k, a in chosen.items()}})[0])
    return {"all_base": before, "chosen": after}


def summary(state: CompileState, terms: ActTerms, acts: ActChoices, chosen: dict[str, int]) -> dict:
    by_id, base = {ag.id: ag for ag in state.act_groups}, acts.base
    return {"weight_loss": terms.weight_loss, "act_loss": terms.act_loss, "base": base,
            "outliers": {k: {"tensors": list(by_id[k].tensors),
                             "loss": {str(a): v + terms.singles[k][base] for a, v in acts.loss[k].items()},
                             "choice": chosen.get(k, acts.base)} for k in acts.groups},
            "cost_allowance": acts.allowance, "cost": acts.cost(chosen),
            "predicted_reduction": -sum(acts.loss[k][a] for k, a in chosen.items()),
            "screening_evaluations": terms.evaluations, "seconds": round(terms.seconds, 3),
            "groups": len(terms.groups)}

