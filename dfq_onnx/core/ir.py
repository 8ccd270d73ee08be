"""Load, convert and save models: the only module that touches ONNX protobuf helpers.

Every pass works on an onnx-graphsurgeon `gs.Graph`; this module turns files into graphs and graphs
back into checked, atomically written files.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import TensorProto, TensorShapeProto, helper, numpy_helper, version_converter

from dfq_onnx.core.errors import ModelLoadError, UnsupportedModelError, UsageError
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
from dfq_onnx.core.proto_release import (  # noqa: F401 - re-exported
    constant_bytes,
    declarations,
    detach_from_protos,
    export_without_raw,
)
from dfq_onnx.core.shared_weights import SessionModel, export_sharing

TWO_GB = 2**31 - 1024
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
    skeleton.CopyFrom(model) if model.ByteSize() <= TWO_GB else copy_without_raw(model, skeleton)
    for tensor in all_tensors(skeleton):
        tensor.ClearField("raw_data")
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = Path(entry.value).name
    h.update(skeleton.SerializeToString(deterministic=True))
    return h.hexdigest()


def over_two_gb(model: onnx.ModelProto) -> bool:
    """Whether protobuf cannot serialize `model`: `ByteSize()` (a whole serialization under upb) is
    asked only when its tensors alone come near the limit."""
    return tensor_bytes(model) >= TWO_GB // 2 and model.ByteSize() > TWO_GB


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


def contradicts(declared: list | None, inferred: list | None) -> bool:
    """An inferred shape that cannot be the declared one: another rank or another fixed size."""
    if declared is None or inferred is None:
        return False
    return len(declared) != len(inferred) or any(
        isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(declared, inferred))


def untyped_outputs_probe(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also lists `names` as graph outputs, without types (for a runtime to
    report what it resolves them to)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in listed)
    return probe


def add_value_type(model: onnx.ModelProto, name: str, elem: int, dims: list | None) -> None:
    """Declare `name`'s element type (and dims: ints, None where unknown) in the graph's value_info."""
    model.graph.value_info.append(helper.make_tensor_value_info(name, elem, dims))


def declare_dims(model: onnx.ModelProto, name: str, dims: list) -> None:
    """Declare graph output `name`'s dimensions (ints; None for an unnamed dynamic one)."""
    out = next(o for o in model.graph.output if o.name == name)
    shape = out.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if d is not None:
            dim.dim_value = int(d)


def value_info_shape(vi: onnx.ValueInfoProto) -> list | None:
    """Dims of a tensor value info: ints where known, the symbolic name (or None) where dynamic."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def carry_over(out: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Make `out` a drop-in replacement of `source`: its graph inputs and outputs take the source's
    declarations (names, element types, dynamic dimensions), and the model's metadata_props, doc
    strings, model version, domain and graph name come along. Intermediate shape annotations are
    dropped where the declared interface differs from the one compiled (calibration sizes), so
    nothing in `out` pins a dimension the source left dynamic. A declared shape the graph contradicts
    (another rank: an exporter's stale declaration) is not carried: the output declares its rank only."""
    declared = {vi.name: vi for vi in [*source.graph.input, *source.graph.output]}
    changed = False
    for vi in [*out.graph.input, *out.graph.output]:
        if vi.name in declared and vi != declared[vi.name]:
            changed |= vi.type != declared[vi.name].type
            compiled = value_info_shape(vi)
            stale = contradicts(value_info_shape(declared[vi.name]), compiled)
            vi.CopyFrom(declared[vi.name])
            if stale:        # the source declared a shape its graph does not compute: the rank only
                vi.type.tensor_type.shape.ClearField("dim")
                vi.type.tensor_type.shape.dim.extend(TensorShapeProto.Dimension() for _ in compiled)
    if changed:
        del out.graph.value_info[:]
    del out.metadata_props[:]
    out.metadata_props.extend(source.metadata_props)
    out.doc_string, out.model_version, out.domain = source.doc_string, source.model_version, source.domain
    out.graph.doc_string, out.graph.name = source.graph.doc_string, source.graph.name


def pin_values(model: onnx.ModelProto, values: dict[str, float]) -> dict:
    """{name: (input index, its declaration, the value as an array of the input's type and rank)} for the
    `--input-value` pins (`model` is only read). Unknown names, inputs of more than one element and
    values the type cannot hold are usage errors."""
    inputs = {vi.name: (i, vi) for i, vi in enumerate(model.graph.input)}
    out = {}
    for name, value in sorted(values.items()):
        if name not in inputs:
            raise UsageError(f"--input-value names '{name}', but the model's inputs are {', '.join(inputs)}")
        index, vi = inputs[name]
        tt = vi.type.tensor_type
        dims = value_info_shape(vi) or []
        if not vi.type.HasField("tensor_type") or any(isinstance(d, int) and d > 1 for d in dims):
            raise UsageError(f"--input-value {name}: the input is {dims}, not a single value; pin only "
                             "scalar inputs (rank 0, or every dimension 1)")
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        arr = np.asarray(value).astype(dtype)
        if arr.astype(np.float64) != float(value):
            raise UsageError(f"--input-value {name}:{value}: the input is {np.dtype(dtype).name}, which "
                             "cannot hold that value")
        out[name] = (index, vi, arr.reshape([1] * len(dims)))
    return out


def pin_inputs(model: onnx.ModelProto, values: dict[str, float]) -> list[tuple[int, onnx.ValueInfoProto]]:
    """Make each input named in `values` an initializer holding that value (one element, the input's
    element type and declared rank), so constant folding takes the branch it selects (silero-vad's If on
    its sample rate). Returns the removed declarations with their positions, for `restore_pinned`.
    Unknown names, inputs of more than one element and values the type cannot hold are usage errors."""
    pinned = []
    for name, (index, vi, arr) in pin_values(model, values).items():
        pinned.append((index, copy.deepcopy(vi)))
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
    for index, _ in sorted(pinned, key=lambda p: -p[0]):
        del model.graph.input[index]
    model.ir_version = max(model.ir_version, 4)      # initializers that are not inputs
    return sorted(pinned, key=lambda p: p[0])


def restore_pinned(out: onnx.ModelProto, pinned: list[tuple[int, onnx.ValueInfoProto]],
                   values: dict[str, float]) -> None:
    """Give the written model its pinned inputs back, at their places, each with an initializer of its
    pinned value as the default (an optional input, IR >= 4): code that feeds it runs unchanged, code
    that does not gets the pinned value. What the compile folded with the value stays folded."""
    inits = {t.name for t in out.graph.initializer}
    for index, vi in pinned:
        out.graph.input.insert(min(index, len(out.graph.input)), vi)
        if vi.name not in inits:
            dims = value_info_shape(vi) or []
            arr = np.asarray(values[vi.name]).astype(helper.tensor_dtype_to_np_dtype(
                vi.type.tensor_type.elem_type)).reshape([1] * len(dims))
            out.graph.initializer.append(numpy_helper.from_array(arr, vi.name))


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


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """`graph` with its constant subexpressions folded and unused nodes removed (the result may be a
    new graph object: use the return value).

    An If whose condition folds to a constant is replaced by the branch it selects
    (`flatten_constant_ifs`), then the graph is folded again, until nothing changes: a flattened branch
    can make the conditions of the Ifs it held constant (silero-vad's If on its pinned sample rate around
    an LSTM's shape-conditioned multi-output Ifs). onnx-graphsurgeon's own flattening keeps only the
    first output of a multi-output If, so it is never used."""
    if not any(n.op == "If" for n in graph.nodes):
        return graph.fold_constants(fold_shapes=True, error_ok=True).cleanup()
    for _ in range(32):      # each round flattens at least one If: bounded by the nesting depth
        graph = graph.fold_constants(fold_shapes=True, error_ok=True, flatten_subgraphs=False).cleanup()
        if not flatten_constant_ifs(graph):
            return graph
    return graph


def flatten_constant_ifs(graph: gs.Graph) -> int:
    """Replace each If of `graph` (and of its subgraphs) whose condition is a constant by the nodes of
    the branch it selects; every If output becomes an Identity of the matching branch output (a branch
    may return an outer tensor, a constant or one tensor twice; Normalize drops the Identities). Branch
    tensors whose names are taken elsewhere are renamed `<name>__<If name>`. Returns how many Ifs."""
    flattened = sum(flatten_constant_ifs(sub) for node in graph.nodes for sub in node.subgraphs())
    index = 0
    while index < len(graph.nodes):
        node = graph.nodes[index]
        cond = node.inputs[0] if node.op == "If" and node.inputs else None
        if not isinstance(cond, gs.Constant) or np.asarray(cond.values).size != 1:
            index += 1
            continue
        branch = node.attrs["then_branch" if bool(np.asarray(cond.values).reshape(-1)[0]) else "else_branch"]
        _rename_taken(graph, branch, node.name or node.outputs[0].name)
        outputs = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        glue = [gs.Node("Identity", f"{out.name}__flattened", inputs=[res], outputs=[out])
                for out, res in zip(outputs, branch.outputs)]
        graph.nodes[index:index + 1] = [*branch.nodes, *glue]
        index += len(branch.nodes) + len(glue)
        flattened += 1
    return flattened


def _all_names(graph: gs.Graph, into: dict[str, set[int]]) -> None:
    for t in graph.tensors().values():
        into.setdefault(t.name, set()).add(id(t))
    for sub in (sub for node in graph.nodes for sub in node.subgraphs()):
        _all_names(sub, into)


def _rename_taken(root: gs.Graph, branch: gs.Graph, suffix: str) -> None:
    """Give the branch's own tensors (node outputs, constants) whose names another tensor of `root` or
    of any subgraph also uses a unique name, so the flattened graph stays in SSA form."""
    names: dict[str, set[int]] = {}
    _all_names(root, names)
    own = [t for n in branch.nodes for t in n.outputs]
    own += [t for t in branch.tensors().values() if isinstance(t, gs.Constant)]
    for t in own:
        if names.get(t.name, set()) - {id(t)}:
            new, k = f"{t.name}__{suffix}", 1
            while new in names:
                new, k = f"{t.name}__{suffix}_{k}", k + 1
            names[t.name].discard(id(t))
            names.setdefault(new, set()).add(id(t))
            t.name = new


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


def check_model(model: onnx.ModelProto, full: bool = True) -> None:
    """onnx.checker (models above 2 GB are checked from a temporary external-data copy)."""
    try:
        if over_two_gb(model):
            with tempfile.TemporaryDirectory(prefix="dfq-check-") as tmp:
                onnx.checker.check_model(str(save_model(model, Path(tmp) / "model.onnx")), full_check=full)
            return
        onnx.checker.check_model(model, full_check=full)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"output failed onnx.checker: {first}") from None


def serialize(model: onnx.ModelProto) -> bytes:
    if isinstance(model, SessionModel):
        raise TypeError("a SessionModel's constants are not in its proto: give it to a session, or export "
                        "the graph with to_model")
    return model.SerializeToString(deterministic=True)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, return_all: bool = False):
    """Write atomically: a temporary file in the same directory, then rename over the target.

    Models above 2 GB are written with their tensors in one external-data file `<name>.data` next to
    the model (also staged and renamed), since protobuf cannot serialize them inline; `model` is left
    as it was. Returns the path (with `return_all`, every file written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not over_two_gb(model):
        _atomic_write(path, serialize(model))
        return [path] if return_all else path
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix="." + path.name + ".") as tmp:
        staged, staged_data = Path(tmp) / path.name, Path(tmp) / data_name
        _write_external(model, staged, staged_data, data_name)
        os.replace(staged_data, path.parent / data_name)
        os.replace(staged, path)
    return [path, path.parent / data_name] if return_all else path


def _write_external(model: onnx.ModelProto, path: Path, data_path: Path, location: str,
                    threshold: int = 1024) -> None:
    """Save `model` with every tensor of >= `threshold` bytes moved to `data_path`, then put the data
    back into the proto (onnx.save_model would strip the caller's proto)."""
    moved: list[tuple[onnx.TensorProto, bytes, bool]] = []
    try:
        with open(data_path, "wb") as fh:
            for tensor in all_tensors(model):
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < threshold:
                    continue
                raw = tensor.raw_data
                offset = fh.seek(0, os.SEEK_END)
                offset += -offset % 4096
                fh.seek(offset)
                fh.write(raw)
                tensor.ClearField("raw_data")
                moved.append((tensor, raw, tensor.HasField("data_location")))
                tensor.data_location = TensorProto.EXTERNAL
                entries = (("location", location), ("offset", str(offset)), ("length", str(len(raw))))
                for key, value in entries:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        _atomic_write(path, serialize(model))
    finally:
        for tensor, raw, had_location in moved:
            del tensor.external_data[:]
            if had_location:
                tensor.data_location = TensorProto.DEFAULT
            else:
                tensor.ClearField("data_location")
            tensor.raw_data = raw


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())     # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)


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
