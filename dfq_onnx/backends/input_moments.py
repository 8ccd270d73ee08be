"""Second moments of the weighted layers' inputs, and their layout against each weight.

For a layer y = W x, a weight error E (W_hat = W + E) moves the output of channel c by e_c . x, so
E[(e_c . x)^2] = e_c^T E[x x^T] e_c; its diagonal part is sum_j E[x_j^2] e_cj^2. `moment_model` measures
m_j = E[x_j^2] per input channel / feature j of each layer's input on the calibration rows:

    x [N, C, *spatial] (Conv, ConvTranspose): j = axis 1;   x [N, .., K] (MatMul, Gemm): j = the last axis

    x ──► Mul(x, x) ──► ReduceMean over every axis but 0 and j ──► [N, C] per call

(per row, so a static-batch model's padding rows can be dropped: `accumulate` sums the first `rows`
rows of each call; a tensor whose axis 0 is not the rows counts every row of it). `importance` lays m
out against the weight, h_i = m_j(i) for the input channel j(i) that element i multiplies:

    Conv W [O, I/G, *k]: j = (o // (O/G)) (I/G) + i       ConvTranspose W [C_in, C_out/G, *k]: j = axis 0
    MatMul W [.., K, N] / Gemm W [K, N]: j = k            Gemm transB W [N, K]: j = k

which core/weight_clip.py weighs the rounding error with (the diagonal Hessian of the layer's output MSE).

With the full H = E[x x^T] (--gptq), `hessian_geometry` names how a layer's input becomes the rows its
weight multiplies (2-D Conv patches per group, MatMul / Gemm rows: core/hessian.py), and `importance`
returns the layer's `LaidHessian` (core/gptq.py) in place of the diagonal.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.observers import reduce_node
from dfq_onnx.backends.runtime import copy_observing
from dfq_onnx.core import hessian, ir
from dfq_onnx.core.gptq import LaidHessian
from dfq_onnx.core.graph_utils import const_values, is_const

CHANNEL_FIRST = ("Conv", "ConvTranspose")
OPS = (*CHANNEL_FIRST, "MatMul", "Gemm")


def measured_input(node: gs.Node, layer) -> str | None:
    """Name of the input tensor whose moments weigh `layer`'s weight, or None (not a supported form)."""
    if node.op not in OPS or layer.weight_index != 1 or len(node.inputs) < 2 or is_const(node.inputs[0]):
        return None
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return None
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    return node.inputs[0].name if rank >= 2 else None


def moment_model(graph: gs.Graph, tensors: dict[str, bool], means: bool = False):
    """A copy of `graph` whose outputs are, per tensor (name -> channel-first?), mean(x^2) per row and
    channel [rows, C] (module docstring); with `means`, mean(x) [rows, C] before each of them."""
    g, table = copy_observing(graph, list(tensors))
    outs = []
    for i, (name, first) in enumerate(tensors.items()):
        t = table[name]
        rank = len(t.shape)
        sq = gs.Variable(f"__moment_{i}_sq", dtype=np.float32)
        g.nodes.append(gs.Node("Mul", name=f"__moment_{i}_Mul", inputs=[t, t], outputs=[sq]))
        axes = [a for a in range(1, rank) if a != (1 if first else rank - 1)]
        for tag, x in ((("_mean", t),) if means else ()) + (("", sq),):
            y = gs.Variable(f"__moment_{i}{tag}", dtype=np.float32)
            if axes:
                g.nodes.append(reduce_node(g, "ReduceMean", x, y, f"__moment_{i}{tag}_ReduceMean", axes))
            else:
                g.nodes.append(gs.Node("Identity", name=f"__moment_{i}{tag}_Identity", inputs=[x],
                                       outputs=[y]))
            outs.append(y)
    g.outputs = outs
    return ir.session_model(g)


def accumulate(sums: dict[str, list], outputs: list[np.ndarray], tensors: list[str], rows: int,
               call_rows: int) -> None:
    """Add one call of `call_rows` rows' per-row moments to `sums` (name -> [sum over rows of m, row
    count]): the first `rows` (the real ones) where axis 0 is the call's rows, every row otherwise."""
    for name, out in zip(tensors, outputs):
        part = out[:rows] if out.shape[0] == call_rows else out
        part = part.reshape(-1, part.shape[-1]).astype(np.float64)
        acc = sums.setdefault(name, [np.zeros(part.shape[1]), 0])
        acc[0] += part.sum(axis=0)
        acc[1] += part.shape[0]


def hessian_geometry(node: gs.Node) -> tuple | None:
    """("conv", kernel, strides, pads, dilations, groups) of a 2-D Conv with explicit pads, ("matmul",)
    / ("gemm_t",) of a MatMul / Gemm with a 2-D constant weight, or None (diagonal moments only); None
    too when a row would be longer than hessian.MAX_DIM."""
    if not is_const(node.inputs[1]):
        return None
    shape = const_values(node.inputs[1]).shape
    if len(shape) != 2 + (node.op == "Conv") * 2:
        return None
    if node.op == "Conv":
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
            return None
        geo = ("conv", tuple(shape[2:]), tuple(node.attrs.get("strides", (1, 1))),
               tuple(node.attrs.get("pads", (0, 0, 0, 0))), tuple(node.attrs.get("dilations", (1, 1))),
               int(node.attrs.get("group", 1)))
        dim = int(np.prod(shape[1:]))
    elif node.op in ("MatMul", "Gemm"):
        geo = ("gemm_t",) if node.op == "Gemm" and node.attrs.get("transB", 0) else ("matmul",)
        dim = int(shape[1] if geo[0] == "gemm_t" else shape[0])
    else:
        return None
    return geo if dim <= hessian.MAX_DIM else None


def hessian_rows(x: np.ndarray, geo: tuple, samples: int) -> np.ndarray:
    """[G, rows, D] rows of input x for a layer of geometry `geo` (core/hessian.py)."""
    if geo[0] == "conv":
        return hessian.conv_rows(x, *geo[1:], samples)
    return hessian.matmul_rows(x, samples)


def importance(node: gs.Node, layer, moments: dict | None) -> np.ndarray | LaidHessian | None:
    """h broadcastable against `node`'s weight from its input's per-channel E[x_j^2] (module docstring),
    or the layer's LaidHessian when the full H was measured and fits the weight; None when the layer
    has no measured moments or their length does not fit the weight."""
    m = (moments or {}).get(layer.node)
    if m is None or not is_const(node.inputs[1]):
        return None
    shape = const_values(node.inputs[1]).shape
    if isinstance(m, LaidHessian):
        return m if m.fits(shape) else None
    m = np.asarray(m, np.float64)
    if node.op == "Conv" and len(shape) >= 2:
        o, per = shape[0], shape[1]
        groups = len(m) // per if per and len(m) % per == 0 else 0
        if not groups or o % groups:
            return None
        j = (np.arange(o) // (o // groups))[:, None] * per + np.arange(per)[None, :]
        return m[j].reshape((o, per) + (1,) * (len(shape) - 2))
    if node.op == "ConvTranspose" and shape[0] == len(m):
        return m.reshape((-1,) + (1,) * (len(shape) - 1))
    if node.op == "Gemm" and node.attrs.get("transB", 0) and len(shape) == 2 and shape[1] == len(m):
        return m[None, :]
    if node.op in ("MatMul", "Gemm") and len(shape) >= 2 and shape[-2] == len(m):
        return m[:, None]
    return None
