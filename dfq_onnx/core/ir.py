"""Load and convert models: with its siblings `declared_io` (the declared interface, pins) and
`model_files` (serialization, the checker, atomic writes), the only modules that touch ONNX protobuf
helpers.

Every pass works on an onnx-graphsurgeon `gs.Graph`; this module turns files into graphs and graphs
back into models, which `model_files` (re-exported here) checks and writes atomically.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper, version_converter

from dfq_onnx.core import model_files
from dfq_onnx.core.declared_io import contradicts
from dfq_onnx.core.errors import ModelLoadError, UnsupportedModelError
from dfq_onnx.core.external_data import (  # noqa: F401 - has_external_data, model_bytes re-exported
    absolute_locations,
    all_tensors,
    check_external_data,
    copy_light,
    copy_value_info,
    copy_without_raw,
    external_array,
    external_bytes,
    has_external_data,
    model_bytes,
    tensor_bytes,
)
from dfq_onnx.core.model_files import (  # noqa: F401 - re-exported: the model-writing half of this module
    check_model,
    over_two_gb,
    save_model,
    serialize,
    write_bytes_atomic,
)
from dfq_onnx.core.proto_release import (  # noqa: F401 - re-exported
    constant_bytes,
    declarations,
    detach_from_protos,
    export_without_raw,
)
from dfq_onnx.core.shared_weights import SessionModel, export_sharing

LAZY_BYTES = 2**30      # external data above this is memory-mapped at import, never copied into the proto
LIGHT_BYTES = 2**26     # models above this are shape-inferred on a copy without their weights' bytes
DTYPES = {"int4": TensorProto.INT4, "uint4": TensorProto.UINT4, "int8": TensorProto.INT8,
          "uint8": TensorProto.UINT8, "int16": TensorProto.INT16, "uint16": TensorProto.UINT16,
          "int32": TensorProto.INT32}
PACKED = {TensorProto.INT4: "int4", TensorProto.UINT4: "uint4"}     # exported from 8-bit storage
NP_STORAGE = {"int4": np.int8, "uint4": np.uint8, "int8": np.int8, "uint8": np.uint8,
              "int16": np.int16, "uint16": np.uint16, "int32": np.int32}


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read a model (external data included) or deep-copy a proto; the source is never modified."""
    if isinstance(source, onnx.ModelProto):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file; check the model path")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model; re-export or re-download it")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model (protobuf parse failed: {exc}); "
                             "is the file truncated or of another format?") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or opset_import); pass an .onnx model "
                             "file")
    check_external_data(model, path.parent)
    if external_bytes(model) > LAZY_BYTES:
        absolute_locations(model, path.parent)   # read later, memory-mapped, by to_graph()
        return model
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read external data: {exc}") from None
    return model


def collect_if_large(model: onnx.ModelProto | int, threshold: int = 1 << 28) -> None:
    """gc.collect() for models (or a size in bytes) above 256 MB: onnx-graphsurgeon graphs sit in
    reference cycles, so a discarded graph (and the weight arrays it shares) waits for a cyclic
    collection; for small models that costs more time (tens of ms per call in a large process) than the
    memory is worth."""
    if (model if isinstance(model, int) else model_bytes(model)) > threshold:
        gc.collect()


def model_hash(model: onnx.ModelProto) -> str:
    """Stable content hash: SHA-256 of the deterministic serialization, plus the bytes of any tensor
    still held in external data (streamed, so models above 2 GB hash too)."""
    external = [t for t in all_tensors(model) if t.data_location == TensorProto.EXTERNAL]
    if not external and not over_two_gb(model):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    h = hashlib.sha256()
    for tensor in all_tensors(model):   # contents, then the structure without them
        if tensor.data_location == TensorProto.EXTERNAL:
            arr = external_array(tensor)
            data = memoryview(arr.reshape(-1).view(np.uint8)) if arr is not None else b""
        else:
            data = memoryview(tensor.raw_data) if tensor.HasField("raw_data") else b""
        h.update(tensor.name.encode())
        for start in range(0, len(data), 1 << 26):
            h.update(data[start:start + (1 << 26)])
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model) if model.ByteSize() <= model_files.TWO_GB else copy_without_raw(model, skeleton)
    for tensor in all_tensors(skeleton):
        tensor.ClearField("raw_data")
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = Path(entry.value).name
    h.update(skeleton.SerializeToString(deterministic=True))
    return h.hexdigest()


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")


def upgrade_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert to `version` with the ONNX version converter (no-op when already at or above it)."""
    current = opset_version(model)
    if current >= version:
        return model
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type, version, ""):
            raise UnsupportedModelError(
                f"node '{node.name or node.output[0]}' ({node.op_type}) does not exist in opset {version}, "
                f"so the model cannot be upgraded from opset {current}; re-export it with opset >= {version}")
    try:
        converted = version_converter.convert_version(model, version)
    except Exception as exc:  # the converter raises bare RuntimeError/IndexError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"cannot upgrade opset {current} -> {version} ({first}); re-export the "
                                    f"model with opset >= {version}") from None
    # The converter can keep the old opset entries of other domains; keep ours exact.
    return converted


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 models list initializers as graph inputs; remove them so they are constants."""
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)  # IR >= 4 allows initializers that are not inputs


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation; returns the model unchanged if inference fails.

    A model above LIGHT_BYTES (and any above 2 GB, which protobuf cannot hand to the C++ inference) is
    inferred on a copy without the large initializers' bytes (shapes and small constants are all it
    reads) and the value types are copied back into `model`: the inference would otherwise hold the
    weights four times (the model, its serialization, the C++ copy and the returned model).
    """
    light = tensor_bytes(model) > LIGHT_BYTES     # > 2 GB implies it (the tensors are the bulk)
    src = copy_light(model, min_bytes=1 << 20) if light else model
    try:
        inferred = onnx.shape_inference.infer_shapes(src, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is best effort for exotic models
        return model
    if not light:
        return inferred
    copy_value_info(model.graph, inferred.graph)
    return model


def proto_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a NodeProto holds as attributes (an If's branches, a Loop's body)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else list(a.graphs))]


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import into onnx-graphsurgeon; constants still in external data become memory maps; 4-bit
    constants get 8-bit storage and `packed_dtype`, as `constant()` makes them (gs cannot export them)."""
    graph = gs.import_onnx(model)
    for tensor in graph.tensors().values():
        lazy = getattr(tensor, "_values", None) if isinstance(tensor, gs.Constant) else None
        proto = getattr(lazy, "tensor", None)
        if isinstance(proto, onnx.TensorProto) and proto.data_location == TensorProto.EXTERNAL:
            arr = external_array(proto)
            if arr is None:
                raise UnsupportedModelError(f"tensor '{proto.name}': cannot read external data of type "
                                            f"{TensorProto.DataType.Name(proto.data_type)} lazily")
            tensor.values = arr
        elif isinstance(proto, onnx.TensorProto) and proto.data_type in PACKED:
            tensor.values = numpy_helper.to_array(proto).astype(NP_STORAGE[PACKED[proto.data_type]])
            tensor.packed_dtype = PACKED[proto.data_type]
    return graph


def refresh_shapes(graph: gs.Graph) -> int:
    """Re-infer the variables' shapes of `graph` (after constant folding made pads and shape inputs
    constant, dimensions inference left symbolic become known). Inference runs on an export without
    the stale value_info and without the bytes of large constants (shapes and small constants are all it
    reads). Returns how many tensors changed shape; graphs above LAZY_BYTES of constants keep theirs."""
    if sum(t.values.nbytes for t in graph.tensors().values() if isinstance(t, gs.Constant)) > LAZY_BYTES:
        return 0
    model = export_without_raw(graph, min_bytes=1 << 20)
    del model.graph.value_info[:]
    for vi in model.graph.output:        # inferred, not merged with a declaration that may be stale
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # best effort, as infer_shapes
        return 0
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in vi.type.tensor_type.shape.dim]
    for t in graph.outputs:      # a declared output shape stays unless wrong; inferred sizes refine it
        got = shapes.get(t.name)
        if got is not None and t.shape is not None and not contradicts(t.shape, got):
            shapes[t.name] = [g if isinstance(g, int) or d is None else d for d, g in zip(t.shape, got)]
    changed = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t.name in shapes and t.shape != shapes[t.name]:
            t.shape, changed = shapes[t.name], changed + 1
    return changed


def packed_types(graph: gs.Graph) -> dict[str, str]:
    """4-bit storage of the graph's constants by name (see `constant`)."""
    return {t.name: t.packed_dtype for t in graph.tensors().values()
            if isinstance(t, gs.Constant) and getattr(t, "packed_dtype", None)}


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """`graph.copy()` that keeps the 4-bit storage of constants: gs's copy drops `packed_dtype`, and
    the copy would then export int4 weights as int8. Copy graphs with this, never with `.copy()`."""
    packed = packed_types(graph)
    copy = graph.copy()
    if packed:
        for t in copy.tensors().values():
            if isinstance(t, gs.Constant) and t.name in packed:
                t.packed_dtype = packed[t.name]
    return copy


def dangling_inputs(graph: gs.Graph) -> list[str]:
    """Names of node inputs of `graph` (top level) that no node writes and that are neither graph
    inputs nor constants: the graph is not a valid model."""
    inputs, nodes = {id(t) for t in graph.inputs}, {id(n) for n in graph.nodes}
    return sorted({t.name for n in graph.nodes for t in n.inputs
                   if isinstance(t, gs.Variable) and t.name and id(t) not in inputs
                   and not any(id(p) in nodes for p in t.inputs)})


def to_model(graph: gs.Graph, *, opset: int | None = None, ir_version: int | None = None,
             extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """Export a graph with the given default opset (and any custom-domain imports kept)."""
    if opset is not None:
        graph.opset = opset
    if extra_opsets:
        graph.import_domains = [helper.make_opsetid(d, v) for d, v in sorted(extra_opsets.items())]
    packed = packed_types(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    for init in model.graph.initializer:
        if init.name in packed:
            values = numpy_helper.to_array(init)
            init.CopyFrom(helper.make_tensor(init.name, DTYPES[packed[init.name]], values.shape,
                                             _pack_nibbles(values), raw=True))
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def session_model(graph: gs.Graph, **kwargs) -> SessionModel:
    """`to_model(graph, **kwargs)` for an ONNX Runtime session: the large constants stay in the graph's
    arrays and the session reads them there (`core.shared_weights`); the graph is left as it was."""
    return export_sharing(graph, lambda g: to_model(g, **kwargs))


def _pack_nibbles(values: np.ndarray) -> bytes:
    """4-bit values as ONNX raw data: two per byte, the first in the low nibble (int32_data would store
    one varint per pair, about 6 bits per value)."""
    u = values.reshape(-1).astype(np.uint8) & 0x0F
    if len(u) % 2:
        u = np.concatenate([u, np.zeros(1, np.uint8)])
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()


def min_ir_version(opset: int) -> int:
    """Smallest IR version that supports `opset` (ORT refuses models whose IR version is too new)."""
    table = {21: 10, 22: 10, 23: 11, 24: 11, 25: 12}
    return table.get(opset, 8 if opset <= 17 else (9 if opset <= 20 else 12))


def tensor_to_array(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def constant(name: str, values: np.ndarray, dtype: str | None = None) -> gs.Constant:
    """A graph constant; `dtype` ('int4', 'uint16', ...) sets the exported element type."""
    if dtype is None:
        return gs.Constant(name, np.array(values, order="C"))
    arr = np.array(values, dtype=NP_STORAGE[dtype], order="C")  # keeps 0-d scalars 0-d
    const = gs.Constant(name, arr)
    if dtype in ("int4", "uint4"):
        # onnx-graphsurgeon cannot export 4-bit types: keep 8-bit storage and repack in to_model().
        const.packed_dtype = dtype
    return const


def elem_type_name(dtype) -> str:
    """Name of a gs tensor's dtype ('float32', 'float16', ...) whether numpy or TensorProto enum."""
    if dtype is None:
        return "unknown"
    if isinstance(dtype, int):
        return helper.tensor_dtype_to_np_dtype(dtype).name if dtype != TensorProto.BFLOAT16 else "bfloat16"
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)
