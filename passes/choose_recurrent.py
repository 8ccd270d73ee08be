"""Choose the integer form or float per LSTM the target's [forms] lists (ort-cpu: DynamicQuantizeLSTM).

    X ─► LSTM(W, R, B, ...) ─► Y, Y_h, Y_c                       float: what the source runs
    X ─► DynamicQuantizeLSTM(W_q, R_q, B, ..., scales) ─► ...    W8A8-dyn: int8 W / R, X per call and h
                                                                 per step on one uint8 grid each

The uniform plan's candidate for an LSTM is the target's form with the plan's weight bits
(`uniform_form`); the integer form is 0.2-0.6x the float LSTM's time on ORT CPU (hidden 128-512,
BENCHMARKS.md session 22), so the decision is accuracy only. Like an activation group's precision
(ChooseActivationPrecision's outliers), each LSTM is scored at the model output on the scoring samples,
with R the loss against the FP32 model (sensitivity/recurrent_probe.py: the real kernel runs, its per-step
grids have no float simulation):

    L_w  = R(every weight on its plan grid: static layers, form MatMuls, every LSTM's W / R; activations
           float)                              what the plan's weights cost together
    D_u  = R(LSTM u in its integer form, everything else FP32)

An LSTM whose integer form alone costs the output more than all the weights together (D_u > L_w) stays
float: its input or state carries what one grid per call cannot hold (a speaker encoder's first LSTM on
a power spectrum without its log: cosine to FP32 0.69 in the form, 0.9995 left float). The accepted ones
are then measured together, J = R(all of them in the form), and while J > BROKEN (16) x L_w the worst
single goes back to float (act_scoring's joint bound). Cost: 2 + U (+ 1 per step back) evaluations for U
LSTMs, each a session over a copy of the model.

What stays float, with its reason in the report's `recurrent.float`: an LSTM the kernel cannot take
(backends/recurrent.py: layout = 1, non-constant weights), a plan with no recurrent candidate for its bits
(--act-bits 16 / 32: the kernel quantizes activations to 8 bits), a budget (mixed plans do not score
recurrent forms yet), and no samples to score on (--calib analytic).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import forms, qdq, recurrent
from dfq_onnx.backends.memory import release
from dfq_onnx.core import cache, candidates, ir, numerics
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.sensitivity.act_scoring import BROKEN
from dfq_onnx.sensitivity.evaluator import Evaluator
from dfq_onnx.sensitivity.recurrent_probe import WEIGHTS, RecurrentProbe
from dfq_onnx.sensitivity.table import load_json, save_json_atomic

log = logging.getLogger(__name__)
ENGINE = 1     # bump when the terms change: old cache entries are then ignored


def recurrent_forms(target) -> bool:
    """Whether the target's [forms] lists a recurrent op (the pipeline's ChooseRecurrentForms)."""
    return any(target.forms_for(op) for op in recurrent.RECURRENT_OPS)


def plan_candidate(state: CompileState, op: str) -> tuple[tuple | None, str | None]:
    """(the uniform plan's form for `op`, None) or (None, why the plan keeps it float)."""
    opts = state.options
    if opts.mixed:
        return None, "a budget: mixed plans do not score recurrent forms"
    bits = opts.weight_bits or state.target.default_weight_bits
    cand = state.target.uniform_form(op, bits, opts.act_bits or state.target.default_act_bits)
    if cand is None or candidates.form(cand) == "float":
        return None, f"the target has no {op} form for W{bits}"
    if opts.act_bits is not None and opts.act_bits != cand[1]:
        return None, (f"--act-bits {opts.act_bits}: {candidates.name(cand)} quantizes activations to "
                      f"{cand[1]} bits")
    if opts.calib == "analytic" or state.calib is None:
        return None, "no samples to score the form on (--calib analytic)"
    return cand, None


def _plan_weights(state: CompileState, graph: gs.Graph, forms_of: dict) -> None:
    """Every weight of `graph` (a copy) on its plan grid, as float constants (the L_w configuration)."""
    nodes = {node_label(n): n for n in graph.nodes}
    for g in state.groups:
        cand = tuple(state.plan.bits.get(g.id, ()))
        for label in g.layers:
            layer, node = state.spec.layers[label], nodes.get(label)
            if node is None or layer.role != "weighted" or not cand or candidates.form(cand) == "float":
                continue
            t = node.inputs[layer.weight_index]
            w = np.asarray(const_values(t), np.float32)
            if layer.form:
                hat = forms.weight_hat(layer.op, w, cand)
            else:
                q, scale, _, _ = qdq.quantize_weight(state.target, w, None, None, int(cand[0]), layer.axis)
                axis = layer.axis if state.target.per_channel else None
                hat = numerics.dequantize(q, scale, 0, axis)
            node.inputs[layer.weight_index] = gs.Constant(f"{t.name}_plan_grid", hat.astype(np.float32))
    for label, cand in forms_of.items():
        node = nodes[label]
        for i in (1, 2):
            t = node.inputs[i]
            hat = recurrent.weight_hat(const_values(t), int(cand[0]), state.target.narrow_range)
            node.inputs[i] = gs.Constant(f"{t.name}_plan_grid", hat)


def _variant(state: CompileState, forms_of: dict):
    def build(config: dict) -> gs.Graph:
        graph = ir.copy_graph(state.graph)
        if config.get(WEIGHTS):
            _plan_weights(state, graph, forms_of)
        nodes = {node_label(n): n for n in graph.nodes}
        for label, cand in forms_of.items():
            if config.get(label):
                recurrent.emit_lstm(graph, nodes[label], int(cand[0]), state.target.narrow_range)
        return graph.cleanup().toposort()
    return build


class ChooseRecurrentForms(Pass):
    """Analysis: the integer form or float per LSTM, scored at the output (module docstring)."""

    name = "ChooseRecurrentForms"

    def __init__(self, samples: int | None = None, metric: str = "auto", use_cache: bool = True,
                 cache_dir: str | None = None):
        self.samples, self.metric, self.use_cache, self.cache_dir = samples, metric, use_cache, cache_dir

    def run(self, state: CompileState) -> PassResult:
        found = recurrent.recurrent_nodes(state.graph, state.target)
        state.recurrent = {}
        if not found:
            return PassResult(False, "no recurrent layer")
        kept, todo = {}, {}
        for node in found:
            cand, why = plan_candidate(state, node.op)
            why = why or recurrent.unsupported(node)
            if why:
                kept[node_label(node)] = why
            else:
                todo[node_label(node)] = cand
        notes = {"form": sorted({candidates.name(c) for c in todo.values()}), "float": kept}
        if todo:
            terms = self._cached(state, todo)
            chosen = terms.pop("accepted")
            notes.update(terms)
            for label in todo:
                if label not in chosen:
                    kept[label] = (f"its integer form alone costs the output {terms['singles'][label]:.3g}, "
                                   f"more than all the weights together ({terms['weights_loss']:.3g})"
                                   if label not in terms["dropped"] else
                                   f"dropped from the joint plan (above {BROKEN:g}x the weights' loss)")
            state.recurrent = {label: todo[label] for label in chosen}
        notes["chosen"] = sorted(state.recurrent)
        state.report.notes["recurrent"] = notes
        return PassResult(False, f"{len(state.recurrent)} of {len(found)} recurrent layers in the integer "
                                 "form")

    def _cached(self, state: CompileState, todo: dict) -> dict:
        """`_decide`'s terms through the cache (keyed by the scoring rows, the LSTMs and the plan)."""
        from dfq_onnx.passes.act_terms import plan_scoring

        samples, labels, _, batch, _, key = plan_scoring(state, self.samples, self.metric)
        key = {**key, "recurrent_engine": ENGINE, "todo": sorted([k, list(c)] for k, c in todo.items()),
               "plan": sorted([g, list(c)] for g, c in state.plan.bits.items())}
        path = cache.cache_path("recurrent", key, self.cache_dir).with_suffix(".json")
        hit = load_json(path, json.loads) if self.use_cache else None
        if hit is not None:
            return {**hit, "cache_hit": True}
        terms = self._decide(state, todo, samples, labels, batch)
        if self.use_cache:
            save_json_atomic(path, json.dumps(terms))
        return {**terms, "cache_hit": False}

    def _decide(self, state: CompileState, todo: dict, samples, labels, batch) -> dict:
        from dfq_onnx.passes.sensitivity import chunked

        start = time.perf_counter()
        samples, labels, batch = chunked(state, samples, labels, batch)
        probe = RecurrentProbe(state.graph, _variant(state, todo))
        ev = Evaluator(probe, probe.probe.model, samples, labels, self.metric, batch,
                       output_producers(state.graph))
        weights = float(ev.loss({WEIGHTS: "plan"})[0])
        singles = {u: float(ev.loss({u: "dyn"})[0]) for u in todo}
        chosen = [u for u in todo if singles[u] <= weights]
        joint, dropped = [], []
        while chosen:
            j = float(ev.loss({u: "dyn" for u in chosen})[0]) if len(chosen) > 1 else singles[chosen[0]]
            joint.append((list(chosen), j))
            if j <= BROKEN * weights:
                break
            worst = max(chosen, key=lambda u: singles[u])
            chosen.remove(worst)
            dropped.append(worst)
        state.forward_passes += ev.forward_passes
        probe.close()
        del ev
        release()
        log.info("recurrent forms: weights %.4g, singles %s", weights, singles)
        return {"accepted": chosen, "weights_loss": weights, "singles": singles, "joint": joint,
                "dropped": dropped, "metric": self.metric, "rows": int(len(next(iter(samples.values())))),
                "sessions": probe.sessions, "seconds": round(time.perf_counter() - start, 3)}
