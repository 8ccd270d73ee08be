"""Fold constant scalings that sit next to a linear layer but not after it (Normalize, after affine_fold).

Two exporter spellings leave a float elementwise op between quantized layers that no integer kernel
of the runtime takes, so the quantized graph runs it as DequantizeLinear -> op -> QuantizeLinear:

1. A scalar Mul / Div whose output only linear layers read (MobileNetV3's hard-swish as exported by
   Paddle: x * Clip(x + 3, 0, 6) / 6 -> Conv). With y = c x read as the input of W:

       W y + b = (c W) x + b          (scalar c, finite, non-zero for Div; any padding: pad(c x) = c pad(x))

   so every reader's weight takes the factor and the node goes. Not GELU's closing Mul(0.5): the
   runtimes fuse x (1 + erf(x / sqrt 2)) * 0.5 into one Gelu kernel only with it (act_functions.gelu_nodes;
   folded, ORT runs Div, Erf, Add, Mul as four kernels over the FFN's widest tensor).
2. A HardSigmoid of a layer's output (squeeze-excitation gates): with y = W x + b read by it alone,

       HardSigmoid(y) = Clip(alpha y + beta, 0, 1) = Clip((alpha W) x + (alpha b + beta), 0, 1)

   and the Clip(0, 1) is then absorbed into the layer's output encoding like a Relu
   (passes/quant_groups.py): the runtime fuses the layer into its integer kernel.

Legal under affine_fold's rules for the layer (weights and bias constants read by it alone, its
output read by this node only and no graph output); reader folding also needs every reader of y to be
such a layer reading y as its data input only. Results differ from the source by float rounding.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.act_functions import gelu_nodes
from dfq_onnx.core.affine_fold import bias_of, layer_ok, out_channels, scale_weight, set_bias
from dfq_onnx.core.graph_utils import (
    WEIGHTED_LAYERS,
    const_values,
    is_const,
    is_graph_output,
    scalar_value,
    unique_name,
)


def _scalar(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """(data input, factor) of a scalar constant Mul / Div; None otherwise."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    k = 1 if is_const(node.inputs[1]) else 0 if node.op == "Mul" and is_const(node.inputs[0]) else None
    if k is None or is_const(node.inputs[1 - k]):
        return None
    value = scalar_value(node.inputs[k])
    if value is None:
        return None
    return node.inputs[1 - k], (value if node.op == "Mul" else 1.0 / value)


def _reads_as_data(reader: gs.Node, y: gs.Tensor) -> bool:
    if reader.op not in WEIGHTED_LAYERS or len(reader.inputs) < 2 or reader.inputs[0] is not y:
        return False
    if any(t is y for t in reader.inputs[1:]):
        return False
    w = reader.inputs[1]
    return is_const(w) and len(w.outputs) == 1 and w.values.dtype == np.float32


def fold_into_readers(graph: gs.Graph) -> int:
    """Rewrite 1 (module docstring); returns how many nodes went."""
    folded = 0
    gelu = gelu_nodes(graph)
    for node in [n for n in graph.nodes if n.op in ("Mul", "Div")]:
        found = _scalar(node)
        if found is None or not node.outputs or id(node) in gelu:
            continue
        x, factor = found
        y = node.outputs[0]
        readers = list(y.outputs)
        if not readers or is_graph_output(graph, y) or not all(_reads_as_data(r, y) for r in readers):
            continue
        for reader in readers:
            w = reader.inputs[1]
            values = const_values(w).astype(np.float64) * factor
            reader.inputs[1] = gs.Constant(w.name, values.astype(np.float32))
            reader.inputs[0] = x
        node.inputs.clear()
        node.outputs.clear()
        folded += 1
    graph.cleanup()
    return folded


def fold_hard_sigmoid(graph: gs.Graph) -> int:
    """Rewrite 2 (module docstring); returns how many HardSigmoid nodes became a Clip(0, 1)."""
    folded = 0
    for node in [n for n in graph.nodes if n.op == "HardSigmoid"]:
        y = node.inputs[0]
        layer = y.inputs[0] if len(y.inputs) == 1 else None
        if layer is None or not layer_ok(layer, y, graph):
            continue
        n = out_channels(layer)
        bias = layer.inputs[2] if len(layer.inputs) > 2 and layer.inputs[2].name else None
        if n is None or (bias is not None and const_values(bias).size not in (1, n)):
            continue
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        b = bias_of(layer, n)
        scale_weight(layer, np.full(n, alpha))
        set_bias(layer, b * alpha + beta,
                 bias.name if bias is not None else unique_name(graph, f"{layer.name}_bias_folded"))
        lo = gs.Constant(unique_name(graph, f"{node.name}_min"), np.array(0.0, np.float32))
        hi = gs.Constant(unique_name(graph, f"{node.name}_max"), np.array(1.0, np.float32))
        node.op, node.attrs = "Clip", {}
        node.inputs.extend([lo, hi])
        folded += 1
    return folded
