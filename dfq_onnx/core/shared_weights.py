"""Models for ONNX Runtime sessions whose large constants stay in the graph's numpy arrays.

A session built from a serialized model holds its weights three times while it is made: the exported
proto (every constant copied into raw bytes), its serialization, and ONNX Runtime's own tensors. A
BERT-base graph (440 MB of float32 weights) then peaked at ~1.5 GB over the graph per session, and each
calibration / probe / segment session repeated it. Here the model handed to ONNX Runtime declares each
constant of at least SHARE_BYTES as external data (a placeholder location, never read) and the session
receives the graph's arrays themselves as in-memory external initializers
(`SessionOptions.add_external_initializers`): ONNX Runtime reads them where they are, so the proto is a
few hundred kB and no copy of the weights is made for the proto (ORT may still keep prepacked copies
for its kernels). Same nodes, same values: the session computes what the serialized model computes.
ONNX Runtime 1.32 still copies each in-memory initializer into its own tensor when the session is made
(session 21: an 85 MB constant grew a session 92 MB, at every optimization level): what this saves is
the proto and its serialization; a tensor a probe picks from at run time is fed as an input instead
(sensitivity/form_switch.py).

`SessionModel` behaves as the proto for reading (`.graph`, `.ByteSize()`); `backends.runtime.session`
and the probe's session accept it. The arrays must not be written while a session uses them (no pass
writes a graph array in place: passes replace constants). Subgraph constants (If branches) stay inline:
ONNX Runtime refuses an external-data placeholder inside a subgraph (checked with ORT 1.32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

SHARE_BYTES = 1 << 16            # smaller constants stay in the proto (ORT's per-initializer overhead)
PLACEHOLDER = "dfq-in-memory"    # the external-data location of a shared constant (never opened)
# weight types only: int32 / int64 constants may be shapes, axes or indices, whose values ONNX Runtime's
# shape inference reads from the proto (it cannot read them from external data)
SHAREABLE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
             np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int16): TensorProto.INT16,
             np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
             np.dtype(np.uint16): TensorProto.UINT16}


@dataclass
class SessionModel:
    """An exported model whose constants in `arrays` are external placeholders (module docstring)."""

    proto: object                                   # onnx.ModelProto
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, name):                    # read it as the proto: .graph, .ByteSize(), ...
        if name.startswith("__") or name in ("proto", "arrays"):
            raise AttributeError(name)
        return getattr(self.proto, name)


class _Placeholder(gs.ir.tensor.LazyValues):
    """Exported by onnx-graphsurgeon as this external-data proto, without reading any values."""

    def __init__(self, arr: np.ndarray, name: str):
        proto = TensorProto(name=name, data_type=SHAREABLE[arr.dtype], dims=arr.shape,
                            data_location=TensorProto.EXTERNAL)
        entry = proto.external_data.add()
        entry.key, entry.value = "location", PLACEHOLDER
        self.tensor, self.shape, self.dtype, self.nbytes = proto, arr.shape, arr.dtype, arr.nbytes


def shareable(t, min_bytes: int | None = None) -> bool:
    values = getattr(t, "_values", None)
    min_bytes = SHARE_BYTES if min_bytes is None else min_bytes
    return (isinstance(t, gs.Constant) and isinstance(values, np.ndarray) and values.dtype in SHAREABLE
            and values.nbytes >= min_bytes and not getattr(t, "packed_dtype", None) and values.ndim > 0)


def placeholder(tensor) -> bool:
    """Whether an exported tensor proto is a shared constant's placeholder."""
    return any(e.key == "location" and e.value == PLACEHOLDER for e in tensor.external_data)


def export_sharing(graph: gs.Graph, export, min_bytes: int | None = None) -> SessionModel:
    """`export(graph)` (a ModelProto) with the graph's top-level constants of >= `min_bytes` as
    placeholders, and the arrays they stand for; the graph is left as it was."""
    swapped: list[tuple[gs.Constant, np.ndarray]] = []
    arrays: dict[str, np.ndarray] = {}
    inner = {id(t) for sub in graph.subgraphs(recursive=True) for t in sub.tensors().values()}
    try:
        for t in graph.tensors().values():
            if not shareable(t, min_bytes) or t.name in arrays or id(t) in inner:
                continue
            arr = t._values
            arrays[t.name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
            swapped.append((t, arr))
            t._values = _Placeholder(arr, t.name)
        return SessionModel(export(graph), arrays)
    finally:
        for t, arr in swapped:
            t._values = arr
