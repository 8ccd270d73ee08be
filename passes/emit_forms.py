"""Write the form layers of the bit plan (the target's [forms]; nodes from dfq_onnx/backends/forms.py).

Runs before EmitQDQ, which writes the static Q/DQ layers and leaves these alone. Each layer of a form
group is replaced by its plan candidate's nodes: dynamic int8 MatMuls (readers of one tensor share its
DynamicQuantizeLinear), MatMulNBits / GatherBlockQuantized for block-wise weights, or left float.
"""

from __future__ import annotations

import numpy as np

from dfq_onnx.backends import forms, input_moments
from dfq_onnx.core import candidates
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


def form_choices(state: CompileState) -> dict[str, tuple]:
    """Form layer -> its plan candidate."""
    out = {}
    for g in state.groups:
        for layer in g.layers:
            cand = tuple(state.plan.bits[g.id])
            if state.spec.layers[layer].form and candidates.is_form(cand):
                out[layer] = cand       # (a form layer sharing its weight with a static layer stays float)
    return out


class EmitForms(Pass):
    """Replace each form layer by its candidate's nodes (dynamic int8, block-wise weight-only, float)."""

    name = "EmitForms"

    def run(self, state: CompileState) -> PassResult:
        choices = form_choices(state)
        nodes = {node_label(n): n for n in state.graph.nodes}
        todo = {k: c for k, c in choices.items() if k in nodes and nodes[k].outputs}
        if not todo:
            return PassResult(False, "no form layers" if not choices else "already emitted")
        shared: dict = {}
        counts: dict[str, int] = {}
        for label, cand in todo.items():
            node, layer = nodes[label], state.spec.layers[label]
            w = node.inputs[layer.weight_index]
            h = input_moments.importance(node, layer, state.input_moments)
            info = forms.emit(state.graph, node, layer, cand, state.target.form_settings, shared, h)
            counts[candidates.name(cand)] = counts.get(candidates.name(cand), 0) + 1
            state.report.layers.append({
                "node": label, "op": layer.op, "weight": layer.weight, "weight_bits": int(cand[0]),
                "form": candidates.name(cand), "weight_dtype": (info or {}).get("weight_dtype", "float32"),
                "params": int(np.prod(w.shape)), "shape": [int(d) for d in w.shape],
                "per_channel_axis": None, "weight_scale_min": (info or {}).get("scale_min"),
                "weight_scale_max": (info or {}).get("scale_max"), "input_scale": None,
                "input_zero_point": None, "act_bits": None if cand[1] == candidates.FLOAT_BITS else cand[1],
                "bias": None})
        state.graph.cleanup().toposort()
        summary = ", ".join(f"{n} x{k}" for k, n in sorted(counts.items(), key=lambda kv: kv[0]))
        return PassResult(True, summary)
