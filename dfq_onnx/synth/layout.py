"""Channels-last image inputs (TensorFlow / Keras exports): found in the graph, synthesized channels-first.

ONNX's Conv reads [N, C, H, W]. tf2onnx keeps a TF model's [N, H, W, C] graph input and puts a
Transpose(perm = [0, 3, 1, 2]) after it (after any elementwise preprocessing it exported: Keras'
Rescaling / Normalization, casts). The samplers (the 1/f prior, line drawings, the ES decoders) and
Calibrate's views draw [C, H, W] samples; read as [H, W, C] such an input would get white noise over
its 3-wide last axis and no views (EfficientNet-Lite0 behind such a Transpose lost 4 points of
agreement with FP32; BENCHMARKS.md, session 8).

An input is channels-last when its per-sample shape is [H, W, C] with C <= 4 and H, W >= 8 (the
image-like shapes of `synth.augment`, channels last) and it reaches a Transpose with perm [0, 3, 1, 2]
through elementwise ops only. Synthesis then runs on a copy of the graph whose input of that name is
[N, C, H, W] with a Transpose [0, 2, 3, 1] in front of the original readers, and the samples are
transposed back: pixel for pixel the samples the channels-first export of the same network gets.

One-channel planes: a float input [N, H, W] that the graph makes a one-channel image itself (an
Unsqueeze adding the channel axis, first or last, on its way to a 2-D Conv: Keras' ExpandDims in front
of a Conv2D over a spectrogram, DNSMOS P.808's log-mel [N, 900, 120]) is a field over two axes to the
network, not a bag of independent values; read as [H, W] it got white noise from the samplers and no
views from Calibrate. It is synthesized on a copy of the graph reading [N, 1, H, W] with a Squeeze in
front of the original readers, and the samples are squeezed back (`from_planes`): the samples, range
inference and views of the same network taking a one-channel image (DNSMOS P.808 on 160 degraded
speech clips: MOS bias against FP32 -0.71 -> -0.21, Pearson 0.82 -> 0.94; BENCHMARKS.md, session 16
heldout5).
"""

from __future__ import annotations

from typing import Collection, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import reroute, walk
from dfq_onnx.synth.augment import MAX_CHANNELS, MIN_SIDE

TO_FIRST, TO_LAST = (0, 3, 1, 2), (0, 2, 3, 1)
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Cast", "Identity"})


def _channels_last_shape(shape) -> bool:
    return (len(shape) == 3 and all(isinstance(d, int) for d in shape)
            and 1 <= shape[2] <= MAX_CHANNELS and min(shape[:2]) >= MIN_SIDE)


def _reaches_to_first(t: gs.Tensor) -> bool:
    """`t` reaches a Transpose(perm = [0, 3, 1, 2]) through elementwise ops."""
    return any(node.op == "Transpose" and tuple(node.attrs.get("perm", ())) == TO_FIRST
               for node, _ in walk(t, lambda node, _: node.op in ELEMENTWISE))


def channels_last_inputs(graph: gs.Graph, shapes: Mapping[str, tuple]) -> list[str]:
    """Names of the graph inputs read channels-last (module docstring); `shapes`: per-sample shapes."""
    return [t.name for t in graph.inputs
            if _channels_last_shape(tuple(shapes.get(t.name, ()))) and _reaches_to_first(t)]


def channels_first_graph(graph: gs.Graph, shapes: Mapping[str, tuple], names: Collection[str]) -> gs.Graph:
    """A copy of `graph` whose inputs `names` are [N, C, H, W] (sizes from `shapes`), each followed by
    a Transpose to the original [N, H, W, C] tensor its readers take."""
    g = graph.copy()
    for t in [t for t in g.inputs if t.name in names]:
        h, w, c = shapes[t.name]
        inner = gs.Variable(f"{t.name}/channels_last", dtype=t.dtype, shape=list(t.shape))
        reroute(t, inner)
        t.shape = [t.shape[0], c, h, w]
        g.nodes.append(gs.Node("Transpose", name=f"{t.name}/to_channels_last", attrs={"perm": list(TO_LAST)},
                               inputs=[t], outputs=[inner]))
    return g.toposort()


def _plane_shape(shape) -> bool:
    return len(shape) == 2 and all(isinstance(d, int) for d in shape) and min(shape) >= MIN_SIDE


def _adds_channel_axis(node: gs.Node) -> bool:
    """An Unsqueeze of a rank-3 tensor adding one axis at 1 or 3 (a channel axis, first or last)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.reshape(-1).tolist()
    return node.op == "Unsqueeze" and axes is not None and len(axes) == 1 and int(axes[0]) % 4 in (1, 3)


def _made_plane(t: gs.Tensor) -> bool:
    """Every reader of `t` adds a channel axis (`_adds_channel_axis`) and the result reaches a Conv with a
    4-D kernel through elementwise ops and Transposes."""
    if not t.outputs or not all(_adds_channel_axis(node) for node in t.outputs):
        return False
    on = ELEMENTWISE | {"Unsqueeze", "Transpose"}
    return any(node.op == "Conv" and len(node.inputs) > 1 and len(node.inputs[1].shape or ()) == 4
               for node, _ in walk(t, lambda node, _: node.op in on))


def plane_inputs(graph: gs.Graph, shapes: Mapping[str, tuple]) -> list[str]:
    """Names of the float graph inputs [N, H, W] the graph reads as one-channel images (module docstring)."""
    return [t.name for t in graph.inputs if t.dtype is not None and np.dtype(t.dtype).kind == "f"
            and _plane_shape(tuple(shapes.get(t.name, ()))) and _made_plane(t)]


def plane_graph(graph: gs.Graph, names: Collection[str]) -> gs.Graph:
    """A copy of `graph` whose inputs `names` are [N, 1, H, W], each followed by a Squeeze of axis 1 to
    the original [N, H, W] tensor its readers take."""
    g = graph.copy()
    for t in [t for t in g.inputs if t.name in names]:
        inner = gs.Variable(f"{t.name}/plane", dtype=t.dtype, shape=list(t.shape))
        reroute(t, inner)
        t.shape = [t.shape[0], 1, *t.shape[1:]]
        if g.opset >= 13:
            axes = gs.Constant(f"{t.name}/plane_axes", np.array([1], np.int64))
            g.nodes.append(gs.Node("Squeeze", name=f"{t.name}/to_plane", inputs=[t, axes], outputs=[inner]))
        else:
            g.nodes.append(gs.Node("Squeeze", name=f"{t.name}/to_plane", attrs={"axes": [1]}, inputs=[t],
                                   outputs=[inner]))
    return g.toposort()


def to_planes(arrays: Mapping[str, np.ndarray], names: Collection[str]) -> dict[str, np.ndarray]:
    """[N, H, W] -> [N, 1, H, W] for the arrays of `names`; the others unchanged."""
    return {k: v[:, None] if k in names else v for k, v in arrays.items()}


def from_planes(arrays: Mapping[str, np.ndarray], names: Collection[str]) -> dict[str, np.ndarray]:
    """[N, 1, H, W] -> [N, H, W] (contiguous) for the arrays of `names`; the others unchanged."""
    return {k: np.ascontiguousarray(v[:, 0]) if k in names else v for k, v in arrays.items()}


def to_channels_first(shape: tuple) -> tuple:
    """Per-sample [H, W, C] -> [C, H, W]."""
    h, w, c = shape
    return (c, h, w)


def to_channels_last(arrays: Mapping[str, np.ndarray], names: Collection[str]) -> dict[str, np.ndarray]:
    """[N, C, H, W] -> [N, H, W, C] (contiguous) for the arrays of `names`; the others unchanged."""
    return {k: np.ascontiguousarray(v.transpose(TO_LAST)) if k in names else v for k, v in arrays.items()}
