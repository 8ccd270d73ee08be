"""Function-preserving graph rewrites of Normalize that let the runtime fuse what exporters spell out.

Zero `Pad` into the padding of the layer reading it (exporters write TensorFlow's "same" padding as an
explicit Pad; ORT fuses it into a float Conv, but not across the Q/DQ pair a quantizer puts between):

    x ── Pad(pads p, constant 0) ── Conv(pads c)      ==>   x ── Conv(pads c + p)
    x ── Pad(pads p, constant 0) ── AveragePool(c)    ==>   x ── AveragePool(c + p, count_include_pad=1)

legal when the Pad is constant-mode with value 0, pads only the spatial axes by non-negative amounts,
and every reader is such a layer with explicit (NOTSET / VALID) padding; an AveragePool that already
pads must count the padding (count_include_pad=1) to average the same zeros.

Reshape targets computed from shapes (`x.view(x.size(0), -1)` exports Shape -> Gather -> Unsqueeze ->
Concat -> Reshape; Paddle writes Shape -> Cast -> Slice -> Cast -> Concat) become constants: an entry
that copies dimension k of a tensor whose dimension k is the same (equal static size or equal symbolic
name) as dimension p of the Reshape's data becomes 0 at position p ("copy this dimension", allowzero =
0), a statically known one its value:

    Shape(s) ─ Gather(0) ─ Unsqueeze ─┐
                            [-1] ─────┴ Concat ─► Reshape(x, ·)    ==>   Reshape(x, [0, -1])

so the Reshape runs on quantized data and the shape subgraph disappears.

A last-axis Softmax that the opset-13 version converter spelled out to keep opset-11 semantics
(Flatten(axis = rank - 1) -> Softmax(axis 1) -> Reshape back to the input's shape, given as Shape(x) or
as x's static shape) is one Softmax again: opset 13 normalizes the given axis only, and on the last
axis both forms compute the same:

    x ─ Flatten(r - 1) ─ Softmax(1 or -1) ─ Reshape(x's shape)      ==>   x ─ Softmax(-1)

(also LogSoftmax and Hardmax), which keeps the shapes known to inference and the runtime's kernel one.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import constant_fold, ir
from dfq_onnx.core.graph_utils import const_values, is_const

POOLS = ("Conv", "AveragePool")
INT_TYPES = (6, 7)          # TensorProto.INT32, INT64


def _pad_amounts(node: gs.Node) -> np.ndarray | None:
    """Per-axis [begins..., ends...] of a constant-zero Pad, or None when it is not one."""
    if node.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return None
    ins = node.inputs
    if "pads" in node.attrs:
        pads, value = np.asarray(node.attrs["pads"], np.int64), node.attrs.get("value", 0.0)
    elif len(ins) > 1 and is_const(ins[1]):
        pads = const_values(ins[1]).astype(np.int64).reshape(-1)
        value = const_values(ins[2]).reshape(-1)[0] if len(ins) > 2 and ins[2].name else 0.0
        if len(ins) > 2 and ins[2].name and not is_const(ins[2]):
            return None
    else:
        return None
    rank = len(ins[0].shape) if ins[0].shape is not None else None
    if float(value) != 0.0 or rank is None or pads.size != 2 * rank:
        return None
    if len(ins) > 3 and ins[3].name:   # opset 18 axes: expand to every axis
        if not is_const(ins[3]):
            return None
        axes = const_values(ins[3]).astype(np.int64) % rank
        full = np.zeros(2 * rank, np.int64)
        full[axes], full[axes + rank] = pads[:len(axes)], pads[len(axes):]
        pads = full
    return pads


def _foldable_reader(node: gs.Node, x: gs.Tensor) -> bool:
    if node.op not in POOLS or node.inputs[0] is not x or any(t is x for t in node.inputs[1:]):
        return False
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return False
    has_pads = any(node.attrs.get("pads", [0]))
    if node.op == "AveragePool" and node.attrs.get("ceil_mode", 0):
        return False        # ceil-mode windows past the padding average differently
    return node.op == "Conv" or not has_pads or node.attrs.get("count_include_pad", 0) == 1


def fold_zero_pads(graph: gs.Graph) -> int:
    """Fold constant-zero spatial Pads into their Conv / AveragePool readers; returns how many."""
    outputs = {id(t) for t in graph.outputs}
    folded = 0
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        y = pad.outputs[0]
        amounts = _pad_amounts(pad)
        if amounts is None or id(y) in outputs or not y.outputs or np.any(amounts < 0):
            continue
        rank = len(amounts) // 2
        if rank < 3 or np.any(amounts[[0, 1, rank, rank + 1]]):
            continue
        if not all(_foldable_reader(r, y) for r in y.outputs):
            continue
        spatial = np.concatenate([amounts[2:rank], amounts[rank + 2:]])
        for reader in list(y.outputs):
            old = np.asarray(reader.attrs.get("pads", [0] * (2 * (rank - 2))), np.int64)
            reader.attrs["pads"] = [int(v) for v in old + spatial]
            reader.attrs.pop("auto_pad", None)
            if reader.op == "AveragePool":
                reader.attrs["count_include_pad"] = 1
            reader.inputs[0] = pad.inputs[0]
        pad.outputs.clear()
        folded += 1
    return folded


def shape_entries(t: gs.Tensor) -> list | None:
    """The entries of a 1-D int shape tensor as ints or (source tensor, dim) references, or None."""
    if is_const(t):
        return [int(v) for v in const_values(t).reshape(-1)]
    prod = t.inputs[0] if len(t.inputs) == 1 else None
    if prod is None:
        return None
    if prod.op == "Shape" and not prod.attrs.get("start") and prod.attrs.get("end") is None:
        src = prod.inputs[0]
        return [(src, k) for k in range(len(src.shape))] if src.shape is not None else None
    if prod.op == "Cast" and prod.attrs.get("to") in INT_TYPES:     # Paddle: Shape -> Cast(int32) -> ...
        return shape_entries(prod.inputs[0])
    if prod.op == "Slice":
        return _slice_entries(prod)
    if prod.op == "Concat":
        parts = [shape_entries(i) for i in prod.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if prod.op == "Unsqueeze":
        inner = _scalar_entry(prod.inputs[0])
        return None if inner is None else [inner]
    if prod.op == "Gather" and prod.attrs.get("axis", 0) == 0 and is_const(prod.inputs[1]):
        base = shape_entries(prod.inputs[0])
        idx = const_values(prod.inputs[1]).reshape(-1)
        return None if base is None else [base[int(i)] for i in idx]
    return None


def _slice_entries(node: gs.Node) -> list | None:
    """Entries of Slice(shape entries, start, end[, axes, steps]) on the one axis (Paddle writes
    x.shape[0:2] this way); omitted optional inputs keep their positions. Python's slice clamping is
    ONNX's, for either sign of the step."""
    args = [t if t.name else None for t in node.inputs[1:]]
    if len(args) < 2 or any(a is not None and not is_const(a) for a in args):
        return None
    vals = [None if a is None else [int(v) for v in const_values(a).reshape(-1)] for a in args]
    starts, ends = vals[0], vals[1]
    axes = vals[2] if len(vals) > 2 else None
    steps = vals[3] if len(vals) > 3 else None
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
        return None
    if axes not in (None, [0], [-1]) or (steps is not None and (len(steps) != 1 or steps[0] == 0)):
        return None
    base = shape_entries(node.inputs[0])
    return None if base is None else base[starts[0]:ends[0]:steps[0] if steps else 1]


def _scalar_entry(t: gs.Tensor):
    if is_const(t) and const_values(t).size == 1:
        return int(const_values(t).reshape(-1)[0])
    prod = t.inputs[0] if len(t.inputs) == 1 else None
    if prod is not None and prod.op == "Gather" and prod.attrs.get("axis", 0) == 0 \
            and is_const(prod.inputs[1]) and const_values(prod.inputs[1]).ndim == 0:
        base = shape_entries(prod.inputs[0])
        return None if base is None else base[int(const_values(prod.inputs[1]))]
    return None


def same_dim(a, b) -> bool:
    return (isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)) and a == b and a > 0) or \
        (isinstance(a, str) and a == b)


def _resolve(entries: list, data: gs.Tensor) -> list[int] | None:
    out = []
    for p, e in enumerate(entries):
        if isinstance(e, int):
            out.append(e)
            continue
        src, k = e
        dim = src.shape[k]
        if src is data and k == p:
            out.append(0)
        elif data.shape is not None and p < len(data.shape) and same_dim(dim, data.shape[p]):
            out.append(0)
        elif isinstance(dim, (int, np.integer)) and dim > 0:
            out.append(int(dim))
        else:
            return None
    return out


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, str) or (isinstance(d, (int, np.integer)) and d >= 0)
                                      for d in shape)


def noop_reshapes(graph: gs.Graph) -> list[gs.Node]:
    """Reshape / Flatten nodes whose output shape is their input shape (a version converter's
    Flatten -> Softmax -> Reshape around a 2-D Softmax), for the caller to bypass."""
    return [n for n in graph.nodes if n.op in ("Reshape", "Flatten") and _known(n.inputs[0].shape)
            and _known(n.outputs[0].shape) and list(n.inputs[0].shape) == list(n.outputs[0].shape)]


def fold_shape_reshapes(graph: gs.Graph) -> int:
    """Give Reshapes whose target is computed from shapes a constant target (module docstring)."""
    folded = 0
    for node in [n for n in graph.nodes if n.op == "Reshape" and not is_const(n.inputs[1])]:
        if node.attrs.get("allowzero", 0):
            continue
        entries = shape_entries(node.inputs[1])
        shape = _resolve(entries, node.inputs[0]) if entries is not None else None
        if shape is None or sum(1 for v in shape if v == -1) > 1:
            continue
        node.inputs[1] = gs.Constant(f"{node.name}_shape", np.asarray(shape, np.int64))
        folded += 1
    return folded


NORMALIZERS = ("Softmax", "LogSoftmax", "Hardmax")


def _restores(reshape: gs.Node, x: gs.Tensor) -> bool:
    """Whether `reshape` gives its data x's shape: its target is Shape(x), or x's static shape."""
    entries = shape_entries(reshape.inputs[1])
    if entries is None or x.shape is None or len(entries) != len(x.shape):
        return False
    return all((isinstance(e, tuple) and e[0] is x and e[1] == k) or
               (isinstance(e, int) and isinstance(d, (int, np.integer)) and e == d > 0)
               for k, (e, d) in enumerate(zip(entries, x.shape)))


def _unflattened(node: gs.Node) -> tuple[gs.Node, gs.Tensor] | None:
    """(Reshape, x) when `node` (a normalizer on axis 1 / -1) reads only Flatten(x, r-1) and feeds only
    a Reshape back to x's shape."""
    flat = node.inputs[0].inputs[0] if len(node.inputs[0].inputs) == 1 else None
    readers = node.outputs[0].outputs
    if flat is None or flat.op != "Flatten" or len(node.inputs[0].outputs) != 1 or len(readers) != 1:
        return None
    x, reshape = flat.inputs[0], readers[0]
    rank = len(x.shape) if x.shape is not None else None
    if reshape.op != "Reshape" or not rank or flat.attrs.get("axis", 1) % rank != rank - 1:
        return None
    return (reshape, x) if _restores(reshape, x) else None


def fold_flattened_softmax(graph: gs.Graph) -> int:
    """Flatten -> Softmax -> Reshape back to one last-axis Softmax (module docstring); returns how many."""
    outputs = {id(t) for t in graph.outputs}
    folded = 0
    for node in [n for n in graph.nodes if n.op in NORMALIZERS and n.attrs.get("axis", -1) in (1, -1)]:
        found = _unflattened(node)
        if found is None or id(node.outputs[0]) in outputs:
            continue
        reshape, x = found
        out = reshape.outputs[0]
        reshape.outputs.clear()
        node.outputs[0] = out
        node.inputs[0] = x
        node.attrs["axis"] = -1
        folded += 1
    return folded


def settle_shapes(graph: gs.Graph, rounds: int = 8) -> gs.Graph:
    """`graph` with shape inference and constant folding run until neither changes it (they feed each
    other: a folded Reshape target gives the next shapes), at most `rounds` times."""
    for _ in range(rounds):
        ir.refresh_shapes(graph)
        folded = fold_shape_reshapes(graph)
        before = len(graph.nodes)
        graph = constant_fold.fold_constants(graph)
        if not folded and len(graph.nodes) == before:
            break
    return graph

