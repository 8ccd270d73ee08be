"""The model's declared interface: graph input / output declarations read, compared and written, the
drop-in carry-over of the source's declarations onto the written model, and `--input-value` pins.

Works on onnx protos (like `dfq_onnx.core.ir`, which uses `contradicts` when it refreshes shapes).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorShapeProto, helper, numpy_helper

from dfq_onnx.core.errors import UsageError


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
