"""High-bias absorption (Nagel et al. 2019, sec. 4.1.1) from the BN statistics kept by BN-fold.

For a pair  y = W2 f(h) + b2,  h = W1 x + b1,  channel i of h is N(beta_i, gamma_i^2) after the fold.
With c_i = max(0, beta_i - K |gamma_i|)  (K = `sigma`, Nagel's 3), h_i >= c_i holds for all but a
Gaussian tail of the values, and there ReLU(h_i - c_i) = ReLU(h_i) - c_i, so

    b1' = b1 - c        b2' = b2 + W2 c        (W2 c = sum over taps and input channels of W2[o, i, t] c_i)

keeps the function while the activation's range shrinks by c_i: a tighter per-tensor grid. For an
identity path any c is exact and c_i = beta_i centers the channel. Zero padding in the second layer (or a
Pad on the path) feeds 0, not -c_i, at the borders, so absorption there is approximate and only done
with `padded=True`; Clip(0, hi) would need its bound moved per channel, so it is skipped. The kept
statistics follow: beta_i' = beta_i - c_i.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, node_label, unique_name
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.corrections import formulas as cm
from dfq_onnx.corrections.layer_pairs import LayerPair, find_pairs, linear_kind


def add_to_bias(graph: gs.Graph, node: gs.Node, delta: np.ndarray) -> None:
    """b += delta (float64 arithmetic), creating the bias input when the node has none."""
    if len(node.inputs) > 2 and node.inputs[2].name:
        b = node.inputs[2]
        b.values = (const_values(b).astype(np.float64) + delta).astype(np.float32)
        return
    while len(node.inputs) < 2:
        node.inputs.append(gs.Variable.empty())
    bias = gs.Constant(unique_name(graph, f"{node_label(node)}.bias"), np.asarray(delta, np.float32))
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)


class AbsorbHighBias(Pass):
    """Move the always-present part of each channel's activation into the next layer's bias."""

    name = "AbsorbHighBias"

    def __init__(self, sigma: float = 3.0, padded: bool = False):
        self.sigma, self.padded = sigma, padded

    def _why_not(self, state: CompileState, p: LayerPair) -> str | None:
        if p.act == "clip":
            return f"Clip(0, {p.clip_hi:g}) on the path: its upper bound would have to move per channel"
        if p.padded and not self.padded:
            return (f"'{node_label(p.second)}' sees zero padding, which would not carry the shift (exact "
                    "only without padding)")
        if node_label(p.first) not in state.bn_stats:
            return "no BN statistics"
        return None

    def run(self, state: CompileState) -> PassResult:
        pairs, skipped = find_pairs(state.graph)
        done = []
        for p in pairs:
            reason = self._why_not(state, p)
            if reason:
                skipped.append({"layer": node_label(p.first), "reason": reason})
                continue
            stats = state.bn_stats[node_label(p.first)]
            relu = p.act == "relu"
            c = cm.absorb_amounts(stats.beta, stats.gamma, self.sigma) if relu else stats.beta.copy()
            if not np.any(c > 0 if p.act == "relu" else c != 0):
                continue
            add_to_bias(state.graph, p.first, -c)
            w2 = const_values(p.second.inputs[1])
            add_to_bias(state.graph, p.second, cm.apply_to_input(w2, c, linear_kind(p.second)))
            state.bn_stats[node_label(p.first)] = dataclasses.replace(stats, beta=stats.beta - c)
            done.append({"pair": p.label, "activation": p.act, "channels": int(np.count_nonzero(c)),
                         "absorbed_max": float(np.max(np.abs(c)))})
        state.report.notes["bias_absorption"] = {"pairs": done, "skipped": skipped, "sigma": self.sigma}
        return PassResult(bool(done), f"{len(done)} pairs absorbed, {len(skipped)} layers skipped")
