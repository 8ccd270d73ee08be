"""Letting go of the loaded protobuf once the graph holds the model (Normalize), and exporting without
the weights' bytes.

Under upb every sub-message keeps its whole model's arena alive, and onnx-graphsurgeon's import keeps
sub-messages: the model's `opset_import` and each constant it has not read yet (a LazyValues over the
initializer). `detach_from_protos` removes those references, so the source and the shape-inferred
protos are freed once the compile drops them; `declarations` keeps what `declared_io.carry_over` needs of the
source. Re-exported by `dfq_onnx.core.ir`; no onnx.helper / numpy_helper here.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from dfq_onnx.core.external_data import all_tensors
from dfq_onnx.core.shared_weights import export_sharing, placeholder

NP_DTYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.INT16,
             TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT16, TensorProto.BOOL}


PLAIN = {"name", "dims", "data_type", "raw_data"}     # what gs writes for an array: the same bytes again


def detach_from_protos(graph: gs.Graph) -> int:
    """Make `graph` hold no reference into the protos it was imported from, so they can be freed (a
    sub-message keeps its whole model alive): its opset imports are copied; a constant (or a node's
    tensor attribute) still lazily read from its proto is loaded when
    the proto is plain raw data (exported again, it gives the same bytes), else given a standalone copy of
    its proto. Sparse constants keep theirs. Returns the bytes loaded."""
    loaded = 0
    for g in [graph, *graph.subgraphs(recursive=True)]:
        if g.import_domains is not None:     # gs keeps the model's own opset_import (a sub-message)
            g.import_domains = [_copied(onnx.OperatorSetIdProto(), d) for d in g.import_domains]
        attrs = [v for n in g.nodes for v in n.attrs.values() if isinstance(v, gs.Constant)]
        for t in [*g.tensors().values(), *attrs]:
            lazy = getattr(t, "_values", None) if isinstance(t, gs.Constant) else None
            if not isinstance(lazy, gs.ir.tensor.LazyValues) or isinstance(lazy, gs.ir.tensor.SparseValues):
                continue
            proto = lazy.tensor
            if {f.name for f, _ in proto.ListFields()} <= PLAIN and proto.data_type in NP_DTYPES:
                t.values = lazy.load()
                loaded += t.values.nbytes
            else:
                lazy.tensor = _copied(TensorProto(), proto)
    return loaded


def _copied(empty, proto):
    empty.CopyFrom(proto)
    return empty


def declarations(model: onnx.ModelProto) -> onnx.ModelProto:
    """What `carry_over` reads of `model` once the weights live in the graph: its declared inputs and
    outputs, metadata, doc strings, versions and opsets; no node, no initializer (copying the whole
    proto without its raw data would still re-allocate every tensor's bytes in the source's arena)."""
    out = onnx.ModelProto(ir_version=model.ir_version, doc_string=model.doc_string, domain=model.domain,
                          model_version=model.model_version, producer_name=model.producer_name,
                          producer_version=model.producer_version)
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.graph.name, out.graph.doc_string = model.graph.name, model.graph.doc_string
    out.graph.input.extend(model.graph.input)
    out.graph.output.extend(model.graph.output)
    return out


def constant_bytes(graph: gs.Graph) -> int:
    """Bytes of the graph's top-level constants (read from their arrays, or a lazy proto's shape)."""
    return sum(t.values.nbytes if isinstance(t._values, np.ndarray) else t._values.nbytes
               for t in graph.tensors().values() if isinstance(t, gs.Constant))


def export_without_raw(graph: gs.Graph, min_bytes: int) -> onnx.ModelProto:
    """`gs.export_onnx(graph)` without the raw data of its tensors of >= `min_bytes` (for shape
    inference), never exporting the large constants' bytes: they are written as placeholders
    (`core.shared_weights`) and the placeholders then cleared to bare declarations."""
    model = export_sharing(graph, lambda g: gs.export_onnx(g, do_type_check=False), min_bytes).proto
    for tensor in all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL and placeholder(tensor):
            tensor.ClearField("data_location")
            del tensor.external_data[:]
        elif tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
            tensor.ClearField("raw_data")
    return model
