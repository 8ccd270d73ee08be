"""Undo ONNX Runtime's float fusions of weighted layers (a model saved after ORT's extended optimizations).

ORT's CPU provider fuses a layer and its activation into com.microsoft ops, and a user who saved the
optimized model (SessionOptions.optimized_model_filepath) hands those to the compiler. Left as they are,
their weights are never quantized: every later pass and the runtime's QDQ fusions know Conv / Gemm /
MatMul only. They are written back as the standard ops they were fused from, which ORT fuses again
(into QLinearConv + its activation) when it loads the quantized model:

    FusedConv(X, W, B, [Z]; activation, activation_params) -> Conv(X, W, B) [-> Add(·, Z)] -> activation
    FusedGemm(A, B, C; activation, activation_alpha / _beta)   -> Gemm(A, B, C)             -> activation
    FusedMatMul(A, B; alpha, transA, transB) on 2-D transposes -> [Transpose] MatMul [-> Mul(alpha)]

Activations: Relu, Tanh, Sigmoid, LeakyRelu(alpha), Clip(min, max), HardSigmoid(alpha, beta). A fused
node with another activation, FusedMatMul's batch transposes (transBatchA / B) or a transposed input of
unknown rank is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import unique_name

MS = "com.microsoft"
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
GEMM_ATTRS = ("alpha", "beta", "transA", "transB")


def _activation(graph: gs.Graph, name: str, kind: str, params: list[float], x: gs.Tensor,
                y: gs.Tensor) -> list[gs.Node] | None:
    """The standard node computing activation `kind` of x into y (None when not one of the docstring's)."""
    if kind in ("Relu", "Tanh", "Sigmoid"):
        return [gs.Node(kind, name=name, inputs=[x], outputs=[y])]
    if kind == "LeakyRelu":
        return [gs.Node(kind, name=name, inputs=[x], outputs=[y], attrs={"alpha": float(params[0])})]
    if kind == "HardSigmoid":
        return [gs.Node(kind, name=name, inputs=[x], outputs=[y],
                        attrs={"alpha": float(params[0]), "beta": float(params[1])})]
    if kind == "Clip":
        lo, hi = (gs.Constant(unique_name(graph, f"{name}_{s}"), np.asarray(v, np.float32))
                  for s, v in (("min", params[0]), ("max", params[1])))
        return [gs.Node("Clip", name=name, inputs=[x, lo, hi], outputs=[y])]
    return None


def _params(node: gs.Node) -> tuple[str, list[float]]:
    if node.op == "FusedConv":
        return node.attrs.get("activation", ""), list(node.attrs.get("activation_params", []))
    keys = ("activation_alpha", "activation_beta", "activation_gamma")
    return node.attrs.get("activation", ""), [node.attrs[k] for k in keys if k in node.attrs]


def _unfuse_layer(graph: gs.Graph, node: gs.Node) -> bool:
    kind, params = _params(node)
    y = node.outputs[0]
    op, keep = ("Conv", CONV_ATTRS) if node.op == "FusedConv" else ("Gemm", GEMM_ATTRS)
    z = node.inputs[3] if node.op == "FusedConv" and len(node.inputs) > 3 and node.inputs[3].name else None
    def var(suffix: str) -> gs.Variable:
        return gs.Variable(unique_name(graph, f"{node.name}_{suffix}"), dtype=y.dtype, shape=y.shape)
    layer_out = var(f"{op.lower()}_out")
    summed = var("sum_out") if z is not None else None
    act_in = summed if z is not None else layer_out
    if kind:
        tail = _activation(graph, unique_name(graph, f"{node.name}_{kind}"), kind, params, act_in, y)
        if tail is None:
            return False
    else:
        tail = []
    layer = gs.Node(op, name=node.name, inputs=list(node.inputs[:3]), outputs=[layer_out],
                    attrs={k: v for k, v in node.attrs.items() if k in keep})
    nodes = [layer]
    if z is not None:
        nodes.append(gs.Node("Add", name=unique_name(graph, f"{node.name}_sum"), inputs=[layer_out, z],
                             outputs=[summed]))
    if not tail:                       # no activation: the last node writes y itself
        nodes[-1].outputs = [y]
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes += nodes + tail
    return True


def _unfuse_matmul(graph: gs.Graph, node: gs.Node) -> bool:
    attrs = node.attrs
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        return False
    a, b = node.inputs[:2]
    y = node.outputs[0]
    ins, nodes = [], []
    for t, flag in ((a, "transA"), (b, "transB")):
        if not attrs.get(flag, 0):
            ins.append(t)
            continue
        if t.shape is None or len(t.shape) < 2:
            return False
        perm = list(range(len(t.shape)))
        perm[-2:] = perm[-1], perm[-2]
        if isinstance(t, gs.Constant):      # a transposed weight: the constant itself, so it stays a weight
            ins.append(gs.Constant(unique_name(graph, f"{t.name}_transposed"),
                                   np.ascontiguousarray(np.transpose(t.values, perm))))
            continue
        out = gs.Variable(unique_name(graph, f"{node.name}_{flag}_out"), dtype=t.dtype)
        nodes.append(gs.Node("Transpose", name=unique_name(graph, f"{node.name}_{flag}"), inputs=[t],
                             outputs=[out], attrs={"perm": perm}))
        ins.append(out)
    alpha = float(attrs.get("alpha", 1.0))
    product = y if alpha == 1.0 else gs.Variable(unique_name(graph, f"{node.name}_product"), dtype=y.dtype,
                                                 shape=y.shape)
    nodes.append(gs.Node("MatMul", name=node.name, inputs=ins, outputs=[product]))
    if alpha != 1.0:
        scale = gs.Constant(unique_name(graph, f"{node.name}_alpha_value"), np.asarray(alpha, np.float32))
        nodes.append(gs.Node("Mul", name=unique_name(graph, f"{node.name}_alpha"), inputs=[product, scale],
                             outputs=[y]))
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes += nodes
    return True


def unfuse_contrib(graph: gs.Graph) -> int:
    """Rewrite the module docstring's fused nodes as standard ops (in place); returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.domain != MS or not node.outputs:
            continue
        if node.op in ("FusedConv", "FusedGemm"):
            count += _unfuse_layer(graph, node)
        elif node.op == "FusedMatMul" and len(node.inputs) == 2:
            count += _unfuse_matmul(graph, node)
    if count:
        graph.cleanup().toposort()
    return count
