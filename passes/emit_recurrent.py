"""Write the recurrent layers ChooseRecurrentForms put in their integer form (backends/recurrent.py).

Runs before EmitForms / EmitQDQ, which leave these nodes alone (an LSTM is no static layer):

    X ─► LSTM(W, R, B, seq_lens, h0, c0, P) ─► Y, Y_h, Y_c
      becomes
    X ─► DynamicQuantizeLSTM(W_q, R_q, B, seq_lens, h0, c0, P, W_scale, W_zp, R_scale, R_zp) ─► Y, Y_h, Y_c
"""

from __future__ import annotations

from dfq_onnx.backends import recurrent
from dfq_onnx.core import candidates
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


class EmitRecurrentForms(Pass):
    """Replace each LSTM of `state.recurrent` by its integer form's node."""

    name = "EmitRecurrentForms"

    def run(self, state: CompileState) -> PassResult:
        nodes = {node_label(n): n for n in state.graph.nodes}
        todo = {k: c for k, c in state.recurrent.items()
                if k in nodes and nodes[k].op in recurrent.RECURRENT_OPS and nodes[k].outputs}
        if not todo:
            return PassResult(False, "no recurrent forms" if not state.recurrent else "already emitted")
        for label, cand in todo.items():
            info = recurrent.emit_lstm(state.graph, nodes[label], int(cand[0]), state.target.narrow_range)
            state.report.layers.append({
                "node": label, "op": "LSTM", "weight": None, "weight_bits": int(cand[0]),
                "form": candidates.name(cand), "weight_dtype": info["weight_dtype"], "params": info["params"],
                "shape": info["shape"], "per_channel_axis": None, "weight_scale_min": info["scale_min"],
                "weight_scale_max": info["scale_max"], "input_scale": None, "input_zero_point": None,
                "act_bits": int(cand[1]), "bias": None})
        state.graph.cleanup().toposort()
        return PassResult(True, f"{candidates.name(next(iter(todo.values())))} x{len(todo)}")
