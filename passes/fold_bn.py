"""Fold BatchNormalization into the Conv / ConvTranspose / Gemm / MatMul that produces its input.

For y = gamma * (z - mean) / sqrt(var + eps) + beta with z = W x + b, per output channel c:

    W'[c] = W[c] * gamma[c] / sqrt(var[c] + eps)
    b'[c] = (b[c] - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c]

so W' x + b' == y exactly (up to float rounding). A bias is created when the layer had none; a MatMul
with a 2-D constant weight becomes a Gemm so it can carry the bias. Not folded (recorded as skips):
weights or producer outputs shared with other nodes, training-mode BN, non-constant parameters,
grouped ConvTranspose. The BN statistics are kept in `state.bn_stats`, keyed by the producing layer:
later passes use them for analytic activation ranges, synthetic data and bias correction.

A BN left in the graph for its producer alone (one after an activation, Conv - Relu - BN as CREPE and
Keras' Conv - Activation - BN blocks are exported) still holds the statistics of the training inputs:
y = gamma (x - mean) / sqrt(var + eps) + beta has mean beta_c and std |gamma_c| per channel there. They
are kept in `state.bn_kept`, keyed by the BN (`tensor`: its output), for synthesis only (its objective
and which inputs they pin: synth/input_range.bn_at_first_layer); the passes that read `bn_stats` take a
folded layer's output as N(beta, gamma^2), which a BN after a Relu does not give its next layer.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import numerics
from dfq_onnx.core.graph_utils import (
    const_values,
    is_const,
    is_graph_output,
    node_label,
    producer,
    unique_name,
    weight_output_axis,
)
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import BNStats, CompileState

FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class FoldBatchNorm(Pass):
    """Fold every foldable BatchNormalization into its producer and keep its statistics."""

    name = "FoldBatchNorm"

    def run(self, state: CompileState) -> PassResult:
        graph = state.graph
        folded = 0
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            reason = self._why_not(graph, bn)
            if reason:
                state.report.skip(node_label(bn), f"BatchNormalization not folded: {reason}")
                if self._statistics_fixed(bn):
                    state.bn_kept[node_label(bn)] = self._stats(node_label(bn), bn)
                continue
            layer = producer(bn.inputs[0])
            state.bn_stats[node_label(layer)] = self._fold(graph, layer, bn)
            folded += 1
        if folded:
            graph.cleanup().toposort()
        state.report.notes["bn_folded"] = folded
        kept = f", {len(state.bn_kept)} left in the graph (statistics kept)" if state.bn_kept else ""
        if state.bn_kept:
            state.report.notes["bn_kept"] = sorted(state.bn_kept)
        return PassResult(folded > 0, f"{folded} BatchNormalization folded{kept}")

    @staticmethod
    def _statistics_fixed(bn: gs.Node) -> bool:
        """Inference-mode BN with constant scale, bias, mean and var (what it normalizes by is known)."""
        return (not bn.attrs.get("training_mode", 0) and len(bn.inputs) >= 5
                and all(is_const(t) for t in bn.inputs[1:5]) and not any(o.outputs for o in bn.outputs[1:]))

    @staticmethod
    def _stats(layer: str, bn: gs.Node) -> BNStats:
        gamma, beta, mean, var = (const_values(t).astype(np.float64) for t in bn.inputs[1:5])
        return BNStats(layer=layer, tensor=bn.outputs[0].name, mean=mean, var=var, gamma=gamma, beta=beta,
                       eps=float(bn.attrs.get("epsilon", 1e-5)))

    @staticmethod
    def _why_not(graph: gs.Graph, bn: gs.Node) -> str | None:
        if bn.attrs.get("training_mode", 0):
            return "training_mode=1"
        if len(bn.outputs) > 1 and any(o.outputs for o in bn.outputs[1:]):
            return "running statistics outputs are used"
        if not all(is_const(t) for t in bn.inputs[1:5]):
            return "scale/bias/mean/var are not constants"
        layer = producer(bn.inputs[0])
        if layer is None or layer.op not in FOLDABLE:
            return f"input is not produced by {'/'.join(FOLDABLE)}"
        if len(bn.inputs[0].outputs) != 1 or is_graph_output(graph, bn.inputs[0]):
            return f"output of '{node_label(layer)}' is also used elsewhere"
        w = layer.inputs[1] if len(layer.inputs) > 1 else None
        if not is_const(w) or len(w.outputs) != 1:
            return f"weight of '{node_label(layer)}' is not a constant used only by that node"
        if len(layer.inputs) > 2 and layer.inputs[2].name and (not is_const(layer.inputs[2])
                                                                or len(layer.inputs[2].outputs) != 1):
            return f"bias of '{node_label(layer)}' is not a constant used only by that node"
        axis = weight_output_axis(layer)
        if axis is None:
            return f"'{node_label(layer)}' has no foldable output-channel axis"
        if layer.op in ("Gemm", "MatMul") and (w.values.ndim != 2 or (layer.op == "Gemm" and (
                layer.attrs.get("alpha", 1.0) != 1.0 or layer.attrs.get("beta", 1.0) != 1.0))):
            return f"'{node_label(layer)}' is not a plain 2-D Gemm/MatMul"
        out_shape = bn.inputs[0].shape
        if layer.op in ("Gemm", "MatMul") and (out_shape is None or len(out_shape) != 2):
            return "BatchNormalization channel axis is not the layer's output-feature axis"
        channels = const_values(bn.inputs[1]).size
        if w.values.shape[axis] != channels:
            return f"channel count mismatch ({w.values.shape[axis]} vs {channels})"
        return None

    @staticmethod
    def _fold(graph: gs.Graph, layer: gs.Node, bn: gs.Node) -> BNStats:
        stats = FoldBatchNorm._stats(node_label(layer), bn)
        gamma, beta, mean, var, eps = stats.gamma, stats.beta, stats.mean, stats.var, stats.eps
        w = layer.inputs[1]
        has_bias = len(layer.inputs) > 2 and layer.inputs[2].name != ""
        b = const_values(layer.inputs[2]) if has_bias else None
        w_new, b_new = numerics.fold_bn(w.values, b, gamma, beta, mean, var, eps, weight_output_axis(layer))
        w.values = w_new
        if has_bias:
            layer.inputs[2].values = b_new
        else:
            bias = gs.Constant(unique_name(graph, f"{node_label(layer)}.bias_folded"), b_new)
            while len(layer.inputs) < 2:
                layer.inputs.append(gs.Variable.empty())
            layer.inputs.append(bias)
        if layer.op == "MatMul":
            layer.op = "Gemm"
            layer.attrs = {"transB": 0}
        out = bn.outputs[0]
        bn.outputs.clear()
        bn.inputs.clear()
        layer.outputs.clear()
        layer.outputs.append(out)
        return stats
