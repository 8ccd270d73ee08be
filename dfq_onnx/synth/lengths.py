"""Length inputs: an integer [N] per-sample valid extent beside a float input (a line recognizer's widths).

A recognizer batched over lines of different widths takes, beside the padded image [N, 1, H, W], each
line's real width [N]; the graph turns it into a mask of valid positions (a Range over the time axis
compared with the width), so padding reads as nothing:

    x [N, 1, H, W] ─► Conv ... ─► features [N, C, T] ─► Mul ─► ...
    widths [N] ─► Add / Div ... ─► Less(Range(T), .) ─► Cast ─┘

Such an input is no token input (rank 1, reaches no embedding table) and synthesis has no value to
search for it. It is a length input when it is integer of rank 1, its one dimension is the batch
dimension (dimension 0) of a float input with exactly one dynamic axis after the batch, and the graph
compares a value computed from it (`COMPARISONS`). The synthetic samples fill that float input
whole, so every sample's length is the float input's extent on that axis: the search runs on a copy of
the graph where the length input is that extent, read off the float input's shape
(Shape - Gather - Expand to [N]), and the samples get it as an array beside the float input.

A boolean input [N, S] whose two dimensions are a float input's batch dimension and its one dynamic axis
(the same names: trueocr's reading-order transformer takes `feats [1, N, 16]` and `mask [1, N]`) is the
same information as a mask of valid positions: every position of a sample is valid, the mask all True.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_bool, is_float, walk
from dfq_onnx.core.scalar_inputs import COMPARISONS

CAST_TO = {np.dtype(np.int64): 7, np.dtype(np.int32): 6}    # ONNX element types (Cast's `to`)


@dataclass(frozen=True)
class LengthInput:
    name: str
    source: str          # the float input whose extent it is
    axis: int            # that input's axis (its one dynamic axis after the batch)
    dtype: np.dtype
    mask: bool = False   # a boolean [N, S] mask of valid positions (all True) instead of lengths [N]


def _is_length_type(t: gs.Tensor) -> bool:
    try:
        return t.dtype is not None and np.dtype(t.dtype) in CAST_TO
    except TypeError:
        return False


def _dynamic_axis(t: gs.Tensor) -> int | None:
    """The one axis after the batch whose dimension is not a known size, else None."""
    axes = [i for i, d in enumerate(t.shape or []) if i and not (isinstance(d, (int, np.integer)) and d > 0)]
    return axes[0] if len(axes) == 1 else None


def _masks(graph: gs.Graph) -> list[LengthInput]:
    """Boolean inputs [N, S] naming a float input's batch and dynamic dimensions (module docstring)."""
    found = []
    for t in graph.inputs:
        if not (is_bool(t) and t.shape is not None and len(t.shape) == 2 and isinstance(t.shape[1], str)):
            continue
        sources = [(s, a) for s in graph.inputs if is_float(s) and s.shape and (a := _dynamic_axis(s))
                   and [s.shape[0], s.shape[a]] == list(t.shape)]
        if len(sources) == 1:
            found.append(LengthInput(t.name, sources[0][0].name, sources[0][1], np.dtype(np.bool_), True))
    return found


def length_inputs(graph: gs.Graph) -> list[LengthInput]:
    """The graph's length inputs and masks of valid positions (module docstring)."""
    found = _masks(graph)
    for t in graph.inputs:
        if not (_is_length_type(t) and t.shape is not None and len(t.shape) == 1):
            continue
        sources = [(s, a) for s in graph.inputs if is_float(s) and s.shape and s.shape[0] == t.shape[0]
                   and (a := _dynamic_axis(s)) is not None]
        if len(sources) != 1 or not any(node.op in COMPARISONS for node, _ in walk(t, lambda *_: True)):
            continue
        source, axis = sources[0]
        found.append(LengthInput(t.name, source.name, axis, np.dtype(t.dtype)))
    return found


def length_graph(graph: gs.Graph, lengths: list[LengthInput]) -> gs.Graph:
    """A copy of `graph` without the length inputs: each is its float input's extent on its axis, [N]."""
    g = graph.copy()
    tensors = g.tensors()
    for k in lengths:
        t, src = tensors[k.name], tensors[k.source]
        shape = gs.Variable(f"{k.name}/shape", dtype=np.int64)
        g.nodes.append(gs.Node("Shape", name=f"{k.name}/shape", inputs=[src], outputs=[shape]))
        if k.mask:
            _all_valid(g, k, t, shape)
            continue
        picked = []
        for what, axis in (("extent", k.axis), ("batch", 0)):
            out = gs.Variable(f"{k.name}/{what}", dtype=np.int64)
            index = gs.Constant(f"{k.name}/{what}_axis", np.array([axis], np.int64))
            g.nodes.append(gs.Node("Gather", name=f"{k.name}/{what}", attrs={"axis": 0},
                                   inputs=[shape, index], outputs=[out]))
            picked.append(out)
        value = gs.Variable(f"{k.name}/value", dtype=k.dtype, shape=list(t.shape))
        g.nodes.append(gs.Node("Expand", name=f"{k.name}/full", inputs=picked, outputs=[value]))
        if k.dtype != np.int64:
            value.dtype, wide = np.int64, value
            value = gs.Variable(f"{k.name}/value_cast", dtype=k.dtype, shape=list(t.shape))
            g.nodes.append(gs.Node("Cast", name=f"{k.name}/cast", attrs={"to": CAST_TO[k.dtype]},
                                   inputs=[wide], outputs=[value]))
        _replace(g, t, value)
    return g.toposort()


def _replace(g: gs.Graph, t: gs.Tensor, value: gs.Tensor) -> None:
    """Readers of input `t` read `value`; `t` is no longer an input of `g`."""
    for node in list(t.outputs):
        for i in [i for i, x in enumerate(node.inputs) if x is t]:
            node.inputs[i] = value
    g.inputs = [x for x in g.inputs if x is not t]


def _all_valid(g: gs.Graph, k: LengthInput, t: gs.Tensor, shape: gs.Tensor) -> None:
    """Mask input `t` replaced by all True of [N, S] (the source's batch and dynamic axis)."""
    dims = gs.Variable(f"{k.name}/dims", dtype=np.int64)
    index = gs.Constant(f"{k.name}/dims_axes", np.array([0, k.axis], np.int64))
    g.nodes.append(gs.Node("Gather", name=f"{k.name}/dims", attrs={"axis": 0}, inputs=[shape, index],
                           outputs=[dims]))
    value = gs.Variable(f"{k.name}/all_valid", dtype=np.bool_, shape=list(t.shape))
    g.nodes.append(gs.Node("Expand", name=f"{k.name}/all_valid",
                           inputs=[gs.Constant(f"{k.name}/true", np.ones((1, 1), np.bool_)), dims],
                           outputs=[value]))
    _replace(g, t, value)


def with_lengths(arrays: dict[str, np.ndarray], lengths: list[LengthInput]) -> dict[str, np.ndarray]:
    """`arrays` with each length input's array: its float input's extent on its axis, per sample."""
    out = dict(arrays)
    for k in lengths:
        x = arrays[k.source]
        out[k.name] = (np.ones((len(x), x.shape[k.axis]), np.bool_) if k.mask
                       else np.full(len(x), x.shape[k.axis], k.dtype))
    return out


def mask_hints(found: list[LengthInput], hints: dict[str, tuple]) -> dict[str, tuple]:
    """`--input-shape` sizes for the masks whose float input has one and they have none: [N, S] of it."""
    return {k.name: (hints[k.source][0], hints[k.source][k.axis]) for k in found
            if k.mask and k.source in hints and k.name not in hints}
