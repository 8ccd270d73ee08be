"""Per-layer cost facts from the graph: parameters and multiply-accumulates per sample."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, node_label


def _static(shape, symbolic: int | None = None) -> list[int] | None:
    if shape is None:
        return None
    if symbolic is not None:
        shape = [d if isinstance(d, int) and d > 0 else symbolic for d in shape]
    if any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        return None
    return list(shape)


def layer_macs(node: gs.Node, symbolic: int | None = None) -> int:
    """MACs of one sample through a weighted node (0 when shapes are unknown; with `symbolic`, a dynamic
    dimension counts as that size: relative costs of a transformer per token with `symbolic=1`).

    Conv: out_elements * (C_in / group) * prod(kernel); ConvTranspose: in_elements * C_out/group * kernel;
    Gemm / MatMul: rows * K * N, rows = product of the output's non-batch leading dims; com.microsoft
    Attention: its q / k / v projection, rows * D * 3D (the score products are activation x activation);
    Gather or EmbedLayerNormalization (embedding table lookups): 0.
    """
    if node.op in ("Gather", "EmbedLayerNormalization"):
        return 0
    w = const_values(node.inputs[1])
    if node.op == "Conv":
        out = _static(node.outputs[0].shape, symbolic)
        return int(np.prod(out[1:]) * np.prod(w.shape[1:])) if out else 0
    if node.op == "ConvTranspose":
        inp = _static(node.inputs[0].shape, symbolic)
        return int(np.prod(inp[1:]) * np.prod(w.shape[1:])) if inp else 0
    out = _static(node.outputs[0].shape, symbolic)
    if out is None or w.ndim < 2:
        return 0
    if node.op == "Attention":
        return int(np.prod(out[1:-1]) * w.shape[0] * w.shape[1])
    k = w.shape[0] if not (node.op == "Gemm" and node.attrs.get("transB", 0)) else w.shape[1]
    return int(np.prod(out[1:]) * k)


def group_costs(graph: gs.Graph, groups) -> tuple[dict[str, int], dict[str, int]]:
    """(params, MACs) per quantizer group."""
    nodes = {node_label(n): n for n in graph.nodes}
    params, macs = {}, {}
    for g in groups:
        params[g.id] = g.params
        macs[g.id] = sum(layer_macs(nodes[name]) for name in g.layers if name in nodes)
    return params, macs
