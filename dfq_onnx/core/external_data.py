"""External data: the tensors of a model (subgraphs included), checks of where their data lives, and
memory maps of it, so models above protobuf's 2 GB limit are never copied into a proto.

Used by `dfq_onnx.core.ir` (which re-exports what other modules need); no onnx.helper/numpy_helper here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from dfq_onnx.core.errors import ModelLoadError

MAPPABLE = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
            TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
            TensorProto.UINT16: np.uint16, TensorProto.INT32: np.int32, TensorProto.UINT32: np.uint32,
            TensorProto.INT64: np.int64, TensorProto.UINT64: np.uint64}


def check_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Refuse external-data locations that escape the model's directory or do not exist."""
    root = base.resolve()
    for tensor in all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        loc = entries.get("location", "")
        target = (root / loc).resolve()
        if os.path.isabs(loc) or not target.is_relative_to(root):
            raise ModelLoadError(f"tensor '{tensor.name}': external data location '{loc}' escapes the "
                                 f"model directory {root}; refusing to read it (keep the data file next to "
                                 "the model and use a relative location)")
        if not target.is_file():
            raise ModelLoadError(f"tensor '{tensor.name}': external data file '{loc}' not found next to "
                                 f"the model in {root}; copy it there with the model")


def all_tensors(model: onnx.ModelProto):
    yield from graph_tensors(model.graph)


def graph_tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes of `graph` and of every subgraph (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graph_tensors(g)


def external_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            total += int(entries.get("length", 0) or 0)
    return total


def tensor_bytes(model: onnx.ModelProto) -> int:
    """The bytes of the model's tensors (external data included) from their shapes and types, without
    encoding anything: the upb protobuf runtime computes `ByteSize()` by serializing the whole message
    (a BERT-base: 0.44 GB more resident and seconds of CPU per call)."""
    return sum(data_bytes(tensor) for tensor in all_tensors(model))


def data_bytes(tensor: onnx.TensorProto) -> int:
    """A tensor's data bytes from its shape and type (external: its length), without encoding it."""
    if tensor.data_location == TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        return int(entries.get("length", 0) or 0)
    if tensor.data_type in MAPPABLE:
        return int(np.prod(tensor.dims, dtype=np.int64)) * np.dtype(MAPPABLE[tensor.data_type]).itemsize
    return tensor.ByteSize()


def model_bytes(model: onnx.ModelProto) -> int:
    """Size of the model with its external data (what a compile may hold in memory)."""
    return model.ByteSize() + external_bytes(model)


def has_external_data(model: onnx.ModelProto) -> bool:
    """True when some tensor is still on disk (a large model loaded lazily)."""
    return any(t.data_location == TensorProto.EXTERNAL for t in all_tensors(model))


def absolute_locations(model: onnx.ModelProto, base: Path) -> None:
    """Point (already validated) external-data locations at absolute paths, so the proto is usable
    wherever it goes next (the graph importer memory-maps them)."""
    for tensor in all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = str((base / entry.value).resolve())


def external_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """A copy-on-write memory map of an external tensor's data (None for types numpy cannot map)."""
    if tensor.data_type not in MAPPABLE:
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(MAPPABLE[tensor.data_type]).newbyteorder("<")
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype)
    offset = int(entries.get("offset", 0) or 0)
    length = entries.get("length")
    if length is not None and int(length) < count * dtype.itemsize:
        raise ModelLoadError(f"tensor '{tensor.name}': external data is {length} bytes, its shape "
                             f"{list(shape)} needs {count * dtype.itemsize}")
    try:
        return np.memmap(entries["location"], dtype=dtype, mode="c", offset=offset, shape=shape)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"tensor '{tensor.name}': cannot map external data "
                             f"{entries['location']}: {exc}") from None


def copy_without_raw(model: onnx.ModelProto, dst: onnx.ModelProto, min_bytes: int = 0) -> None:
    """Copy `model` into `dst` without the raw data of tensors of >= `min_bytes` (never holding two
    copies of it: the bytes are taken out, the proto copied, and the bytes put back)."""
    saved = []
    for tensor in all_tensors(model):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
            saved.append((tensor, tensor.raw_data))
            tensor.ClearField("raw_data")
    try:
        dst.CopyFrom(model)
    finally:
        for tensor, raw in saved:
            tensor.raw_data = raw


TENSOR_FIELDS = ("name", "doc_string", "data_type", "data_location")


def copy_light(model: onnx.ModelProto, min_bytes: int) -> onnx.ModelProto:
    """A copy of `model` whose main-graph initializers of >= `min_bytes` keep their declaration but not
    their data, made without reading those bytes (and without touching `model`: unlike
    `copy_without_raw`, which puts each tensor's bytes back and so re-allocates them in its arena)."""
    light = onnx.ModelProto()
    graph = model.graph
    for fd, value in model.ListFields():
        if fd.name != "graph":
            _copy_field(light, fd.name, value)
    for fd, value in graph.ListFields():
        if fd.name != "initializer":
            _copy_field(light.graph, fd.name, value)
    for tensor in graph.initializer:
        if not tensor.HasField("raw_data") or data_bytes(tensor) < min_bytes:
            light.graph.initializer.append(tensor)
            continue
        bare = light.graph.initializer.add()
        for name in TENSOR_FIELDS:
            if tensor.HasField(name):
                setattr(bare, name, getattr(tensor, name))
        bare.dims.extend(tensor.dims)
        bare.external_data.extend(tensor.external_data)
    return light


def _copy_field(dst, name: str, value) -> None:
    if hasattr(value, "extend"):         # repeated
        getattr(dst, name).extend(value)
    elif hasattr(value, "CopyFrom"):     # message
        getattr(dst, name).CopyFrom(value)
    else:
        setattr(dst, name, value)


def copy_value_info(dst: onnx.GraphProto, src: onnx.GraphProto) -> None:
    """`src`'s value_info and output declarations into `dst`, the same graph (subgraphs included)."""
    del dst.value_info[:]
    dst.value_info.extend(src.value_info)
    for mine, theirs in zip(dst.output, src.output):
        mine.CopyFrom(theirs)
    for a, b in zip(dst.node, src.node):
        for x, y in zip(a.attribute, b.attribute):
            if x.type == onnx.AttributeProto.GRAPH:
                copy_value_info(x.g, y.g)
            elif x.type == onnx.AttributeProto.GRAPHS:
                for g, h in zip(x.graphs, y.graphs):
                    copy_value_info(g, h)
