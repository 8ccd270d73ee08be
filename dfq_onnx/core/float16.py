"""float16 models: compiled in float32, written with the source's interface.

An FP16 export (weights, activations and often its inputs and outputs in float16) quantizes like its
FP32 twin: the integer kernels do not care what precision the float graph had. Normalize widens it:

    every float16 constant (ConstantOfShape's value too)  -> float32 (exact: float16 embeds in float32)
    every float16 tensor's dtype                          -> float32
    Cast(to=float16), the dtype attribute of EyeLike / Random*  -> float32
in the main graph and in every subgraph, so the compile (synthesis, calibration, the probe) runs the
float32 graph. `restore_interface` then puts the source's interface back on the emitted graph:

    x (float16) ─► Cast(to=float) ─► x_float32 ─► ... ─► y_float32 ─► Cast(to=float16) ─► y (float16)

so the written model is a drop-in replacement (same names, same element types). bfloat16 models are
still refused by Normalize (numpy has no bfloat16 to widen from without another dependency).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

FLOAT, FLOAT16 = 1, 10
DTYPE_ATTRS = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
               "RandomNormalLike": "dtype", "RandomUniformLike": "dtype"}


def _low(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype) == np.float16
    except TypeError:
        return False


def _widen_graph(graph: gs.Graph) -> int:
    changed = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and _low(t.values.dtype):
            t.values = np.asarray(t.values, np.float32)
            changed += 1
        elif isinstance(t, gs.Variable) and _low(t.dtype):
            t.dtype = np.float32
            changed += 1
    for node in graph.nodes:
        key = DTYPE_ATTRS.get(node.op)
        if key and (node.attrs.get(key) == FLOAT16 or _low(node.attrs.get(key))):
            node.attrs[key] = FLOAT
            changed += 1
        for name, value in node.attrs.items():
            if isinstance(value, gs.Constant) and _low(value.values.dtype):
                value.values = np.asarray(value.values, np.float32)
                changed += 1
            elif isinstance(value, np.ndarray) and _low(value.dtype):
                node.attrs[name] = value.astype(np.float32)
                changed += 1
            elif isinstance(value, gs.Graph):
                changed += _widen_graph(value)
    return changed


def widen(graph: gs.Graph) -> dict[str, object]:
    """Make `graph` float32 (module docstring), in place; returns the low-precision dtypes of its graph
    inputs and outputs (name -> numpy dtype) for `restore_interface`. Empty for a float32 model."""
    interface = {t.name: t.dtype for t in [*graph.inputs, *graph.outputs] if _low(t.dtype)}
    if not _widen_graph(graph):
        return {}
    return interface


def restore_interface(graph: gs.Graph, interface: dict[str, object]) -> int:
    """Give the graph inputs / outputs named in `interface` their source dtypes back, with a Cast at
    each (in place); returns the number of Casts written."""
    written = 0
    for i, t in enumerate(graph.inputs):
        if t.name in interface:
            outer = gs.Variable(t.name, dtype=interface[t.name], shape=t.shape)
            t.name = f"{outer.name}_float32"
            graph.nodes.insert(0, gs.Node("Cast", name=f"{outer.name}_Cast_float32", inputs=[outer],
                                          outputs=[t], attrs={"to": FLOAT}))
            graph.inputs[i] = outer
            written += 1
    for i, t in enumerate(graph.outputs):
        if t.name in interface:
            outer = gs.Variable(t.name, dtype=interface[t.name], shape=t.shape)
            t.name = f"{outer.name}_float32"
            graph.nodes.append(gs.Node("Cast", name=f"{outer.name}_Cast_float16", inputs=[t],
                                       outputs=[outer], attrs={"to": FLOAT16}))
            graph.outputs[i] = outer
            written += 1
    return written
