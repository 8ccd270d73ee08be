"""Write the float bias of the target's `[bias] separate` ops as an Add after the op.

    x ─Q─DQ─┐                              x ─Q─DQ─┐
    W_q ─DQ─┼─► Conv ─Q─DQ─► ...    ==>    W_q ─DQ─┼─► Conv ─► Add(b [1, C, 1, 1]) ─Q─DQ─► ...
    b ──────┘                                      ┘

y = conv(x, W) + b either way; only where the bias is written changes. Why the openvino target asks for
it: OpenVINO's ONNX frontend reads Conv(x, W, b) as Convolution + Add(Reshape(b, shape built from ShapeOf
of the convolution's output)), and its symbolic shape optimizations may reuse that ShapeOf for any later
Shape of a tensor carrying the same batch dimension (a recurrent cell's zero initial state
ConstantOfShape(Shape(features)[0], H)). The int8 convolution's pre-bias output then has a second reader,
the bias Add no longer fuses into the convolution, and the CPU plugin folds it into the FakeQuantize after
it with the bias of the first channel for every channel (OpenVINO 2026.4; captcha CRNN: 0.66 of steps
= FP32 in OpenVINO, 0.998 in ONNX Runtime). A bias written as Add(conv, constant [1, C, 1, 1]) needs no
ShapeOf and fuses into the convolution as before (BENCHMARKS.md, session 19, helper ov19).

Only float biases move (an int32 bias DequantizeLinear is the quantized kernel's own input).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import node_label, unique_name
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


def _weight_rank(node: gs.Node) -> int | None:
    """Rank of the node's weight (through its DequantizeLinear), None when unknown."""
    w = node.inputs[1]
    if isinstance(w, gs.Constant):
        return len(w.shape)
    if w.shape is not None:
        return len(w.shape)
    producer = w.inputs[0] if w.inputs else None
    if producer is not None and producer.op == "DequantizeLinear" and isinstance(producer.inputs[0],
                                                                                  gs.Constant):
        return len(producer.inputs[0].shape)
    return None


class SeparateBias(Pass):
    """Write the float bias of the target's `[bias] separate` ops (Conv on openvino) as an Add after them."""

    name = "SeparateBias"

    def __init__(self, ops: tuple[str, ...]):
        self.ops = tuple(ops)

    def run(self, state: CompileState) -> PassResult:
        graph = state.graph
        taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        shaped: dict[tuple[str, int], gs.Constant] = {}     # one constant per (bias, rank): shared biases
        moved = 0
        for node in list(graph.nodes):
            if node.op not in self.ops or len(node.inputs) < 3 or not isinstance(node.inputs[2], gs.Constant):
                continue
            rank = _weight_rank(node)
            if rank is None:
                continue
            bias = node.inputs[2]
            key = (bias.name, rank)
            if key not in shaped:
                values = np.asarray(bias.values).reshape((1, -1) + (1,) * (rank - 2))
                shaped[key] = gs.Constant(unique_name(graph, f"{bias.name}_channels", taken), values)
            out = node.outputs[0]
            raw = gs.Variable(unique_name(graph, f"{out.name}_without_bias", taken), dtype=out.dtype,
                              shape=out.shape)
            node.outputs[0] = raw
            node.inputs.pop(2)
            graph.nodes.append(gs.Node("Add", unique_name(graph, f"{node_label(node)}_bias", taken),
                                       inputs=[raw, shaped[key]], outputs=[out]))
            moved += 1
        if not moved:
            return PassResult(False, f"no float bias of {', '.join(self.ops)} to move")
        graph.cleanup().toposort()
        return PassResult(True, f"{moved} {'/'.join(self.ops)} biases written as an Add after the op")
