"""Choose the dynamic int8 form or its exact twin per MatMul input (the uniform plan's form decision).

    x ─► DynamicQuantizeLinear (one grid per tensor) ─► MatMulInteger ...     W8A8-dyn: the default
    x ─► MatMulNBits(accuracy_level 4: int8 per block of 128 along K) ─► y    W8A32-b128: its exact twin

The uniform W8 plan (UniformPlan) gives every form MatMul its first W8 form, the dynamic one. Like a
static activation group's precision (ChooseActivationPrecision), the dynamic form's input grid is a
decision where it breaks the output: measured on one form probe (sensitivity/form_scoring.py) on the
scoring samples, a plan whose dynamic inputs cost the output more than BROKEN (16x) what the exact form
costs it moves the input tensors whose dynamic grid alone costs most to the exact form, worst first, until
the whole plan fits that bound (accuracy first, as for a broken all-A8 plan: the exact form is slower,
1.55x the dynamic form per MatMul on ORT CPU at M = 128; the report's `forms.latency` gives the plan's
predicted form cost against the all-dynamic plan's). A plan within the bound is written as before (3
evaluations: the probe's all-FP32 outputs and the two plans). The exact twin of a dynamic candidate is
the target's first form of the op with the same weight bits and float activations whose blocks divide
the weight (ort-cpu: W8A32-b128); a group without one keeps the dynamic form.

Cost: 3 evaluations on a plan within the bound, on the scoring samples (token models: 2048 tokens); on
a broken one, for U dynamic input tensors: U singles on every 4th scoring row (the screen: each from its
tensor's segment, about half a forward of a quarter of the rows, plus those rows' FP32 reference and
base), singles on every row for the few units the screen cannot tell apart where the decision turns,
and whole-plan steps on every row from the prefix the singles predict (2 where they predict it, at most
about 2 log2 U). The probe holds each decided weight's two candidates as 8-bit codes beside the
model's own FP32 array, fed to its segments (sensitivity/form_switch.py): MPNet's compile peaked at
3.9 GB with three float32 copies in constants ONNX Runtime copied again, 2.0 GB now (session 21).

all-mpnet-base-v2: the 12 FFN-out inputs (GELU outputs [M, 3072]) are the loss (BENCHMARKS.md, sessions
17-19); its decision in session 20's cheaper search: the same 5 units, 24 s of measuring instead of 51.
"""

from __future__ import annotations

import logging

import numpy as np

from dfq_onnx.allocation.costs import layer_macs
from dfq_onnx.backends import forms
from dfq_onnx.backends.memory import release
from dfq_onnx.core import cache, candidates, ir
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import BitPlan, CompileState
from dfq_onnx.sensitivity.evaluator import Evaluator
from dfq_onnx.sensitivity.form_scoring import SINGLE_STRIDE, FormTerms, RowKeys, score_forms
from dfq_onnx.sensitivity.probe import Probe, build_probe
from dfq_onnx.sensitivity.table import load_json, save_json_atomic

log = logging.getLogger(__name__)
ENGINE = 2     # bump when the form terms change: old cache entries are then ignored


def exact_twin(target, op: str, cand: tuple, shape) -> tuple | None:
    """The target's first form of `op` with `cand`'s weight bits and float activations that fits `shape`."""
    for c in target.forms_for(op):
        if (c[0] == cand[0] and c[1] == candidates.FLOAT_BITS and candidates.form(c) != "float"
                and forms.fits(op, c, shape)):
            return c
    return None


def decided_groups(state: CompileState) -> dict[str, tuple[tuple, tuple]]:
    """Group -> (its dynamic plan candidate, its exact twin): MatMul-like form groups of the plan."""
    nodes = {node_label(n): n for n in state.graph.nodes}
    out = {}
    for g in state.groups:
        cand = tuple(state.plan.bits.get(g.id, ()))
        if not g.layers or len(cand) < 3 or candidates.form(cand) != "dyn":
            continue
        layers = [state.spec.layers[n] for n in g.layers]
        if not all(la.form and la.weight_index == 1 for la in layers):
            continue
        twins = {exact_twin(state.target, la.op, cand, nodes[la.node].inputs[1].shape) for la in layers}
        if len(twins) == 1 and None not in twins:
            out[g.id] = (cand, twins.pop())
    return out


def input_units(state: CompileState, groups) -> dict[str, tuple[str, ...]]:
    """Input tensor -> the decided groups reading it, in graph order (one grid: one decision)."""
    nodes = {node_label(n): n for n in state.graph.nodes}
    order = {node_label(n): i for i, n in enumerate(state.graph.nodes)}
    first = {}
    for g in state.groups:
        if g.id in groups:
            x = nodes[g.layers[0]].inputs[0].name
            first.setdefault(x, []).append((min(order[n] for n in g.layers), g.id))
    ranked = sorted(first.items(), key=lambda kv: min(kv[1]))
    return {x: tuple(g for _, g in sorted(v)) for x, v in ranked}


def form_latency(state: CompileState, decided: dict, chosen: set[str]) -> dict:
    """The decided groups' predicted cost: the target's [forms] cost x MACs per row (relative units)."""
    nodes = {node_label(n): n for n in state.graph.nodes}
    cost = state.target.form_settings.get("cost", {})
    macs = {g.id: sum(layer_macs(nodes[n], symbolic=1) for n in g.layers) for g in state.groups
            if g.id in decided}
    before = sum(cost.get(dyn, 1.0) * macs[g] for g, (dyn, _) in decided.items())
    after = sum(cost.get(ex if g in chosen else dyn, 1.0) * macs[g] for g, (dyn, ex) in decided.items())
    return {"all_dynamic": before, "chosen": after, "ratio": after / before if before else 1.0,
            "unit": "declared [forms] cost x MACs per row"}


class ChooseInputForms(Pass):
    """Analysis: the dynamic int8 form or its exact twin per MatMul input, where the dynamic plan breaks
    the output (module docstring)."""

    name = "ChooseInputForms"

    def __init__(self, samples: int | None = None, metric: str = "auto", use_cache: bool = True,
                 cache_dir: str | None = None):
        self.samples, self.metric, self.use_cache, self.cache_dir = samples, metric, use_cache, cache_dir

    def run(self, state: CompileState) -> PassResult:
        decided = decided_groups(state)
        if not decided:
            return PassResult(False, "no dynamic form layer with an exact twin")
        if state.options.calib == "analytic" or state.calib is None:
            state.report.notes["forms"] = {"skipped": "no samples to score on"}
            return PassResult(False, "skipped: no samples")
        units = input_units(state, decided)
        terms, ev, budget = self._terms(state, decided, units)
        chosen = {g for u in terms.chosen for g in units[u]}
        state.plan = BitPlan({g: (decided[g][1] if g in chosen else c) for g, c in state.plan.bits.items()},
                             acts=dict(state.plan.acts))
        notes = {**terms.to_dict(), "latency": form_latency(state, decided, chosen),
                 "exact_form": sorted({candidates.name(ex) for _, ex in decided.values()}),
                 "rows": budget.get("rows"), "samples": budget.get("samples")}
        if ev is not None:
            state.forward_passes += ev.forward_passes
        del ev
        release()
        state.report.notes["forms"] = notes
        return PassResult(False, f"{len(terms.chosen)} of {len(units)} dynamic inputs to the exact form "
                                 f"(dynamic {terms.dynamic_loss:.3g} vs exact {terms.exact_loss:.3g})")

    def _terms(self, state: CompileState, decided: dict, units: dict
               ) -> tuple[FormTerms, Evaluator | None, dict]:
        from dfq_onnx.passes.act_terms import plan_scoring
        from dfq_onnx.passes.sensitivity import chunked

        # the activation decision's rows (a float-input model's within the work budget: a Whisper encoder's
        # 32 rows of 1500 frames would cost minutes per evaluation); token models keep their 2048 tokens
        samples, labels, _, batch, budget, key = plan_scoring(state, self.samples, self.metric)
        key = {**key, "form_engine": ENGINE,
               "decided": sorted((g, [list(c) for c in pair]) for g, pair in decided.items())}
        path = cache.cache_path("forms", key, self.cache_dir).with_suffix(".json")
        hit = load_json(path, FormTerms.from_json) if self.use_cache else None
        if hit is not None:
            return hit, None, budget
        samples, labels, batch = chunked(state, samples, labels, batch)
        groups = [g for g in state.groups if g.id in decided]
        pm = build_probe(state.graph, state.spec, groups, state.ranges, state.target, (),
                         state.target.default_act_bits, form_keys={g: c for g, c in decided.items()})
        fp32 = ir.session_model(ir.copy_graph(state.graph), ir_version=ir.min_ir_version(state.graph.opset))
        n = len(next(iter(samples.values())))
        probe = Probe(pm, segmented=True, samples=n)
        ev = Evaluator(probe, fp32, samples, labels, self.metric, batch, output_producers(state.graph))
        made = []

        def rows() -> Evaluator:
            """The screen's evaluator: every SINGLE_STRIDE-th row, on the same probe (form_scoring), its
            FP32 reference those rows of `ev`'s (no FP32 session beside the probe's)."""
            keep = np.arange(0, n, SINGLE_STRIDE)
            release()           # the gate's freed heap, before the screen's rows are cached
            made.append(Evaluator(RowKeys(probe, "singles"), fp32, {k: v[keep] for k, v in samples.items()},
                                  None if labels is None else labels[keep], self.metric, batch,
                                  output_producers(state.graph), reference=[o[keep] for o in ev.reference]))
            return made[0]
        terms = score_forms(ev, units, {g: c[0] for g, c in decided.items()},
                            {g: c[1] for g, c in decided.items()}, rows)
        ev.forward_passes += sum(m.forward_passes for m in made)
        made.clear()
        if self.use_cache:
            save_json_atomic(path, terms)
        return terms, ev, budget
