"""Types of tensors ONNX shape inference cannot type, from ONNX Runtime's own graph resolution.

ONNX's shape inference knows the standard domains only. A graph with operators of ORT's contrib domain
(`com.microsoft`: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization, ... as ORT's
transformer optimizer and Optimum write them) leaves their outputs untyped, and every tensor computed
from them too: the passes then cannot tell a float activation from an index and quantize nothing there.

ORT types every value when it resolves the graph (its kernels' schemas include the contrib ops). A
session of a copy that lists the untyped values as extra graph outputs (without types) reports each
one's element type and shape through `get_outputs()`, without running anything. The types are written
into the model's value_info; dimensions ORT knows as numbers are kept, the names it invents for the
others are not (they would read as the graph's own symbolic dimensions). ORT reports a value whose shape
it does not know (an `ai.onnx.ml` Scaler's output, as sklearn-onnx writes it before an MLP) with the
dimensions [] of a scalar: such a value gets its type only, no shape (a rank-0 declaration made ORT
refuse the MatMul reading it).

Graph outputs declared scalar (a `shape` with no dimension: some exporters write `shape {}` for every
output) hide their rank from every pass that reads outputs by their shape (the metric, the synthesis
objective of a per-position distribution): ONNX's shape inference keeps a declaration it cannot check,
and ORT without optimizations reports [] too. ORT's optimized resolution (constant folding,
then its own shape inference) computes the rank; `fill_output_ranks` writes it into the declaration
(numbers kept, the other dimensions unnamed). A true scalar (ORT reports [] there too) keeps its `{}`.
"""

from __future__ import annotations

import onnx

from dfq_onnx.backends import runtime
from dfq_onnx.core import declared_io, ir

ORT_TYPES = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(float16)": onnx.TensorProto.FLOAT16,
             "tensor(double)": onnx.TensorProto.DOUBLE, "tensor(bfloat16)": onnx.TensorProto.BFLOAT16,
             "tensor(int64)": onnx.TensorProto.INT64, "tensor(int32)": onnx.TensorProto.INT32,
             "tensor(int16)": onnx.TensorProto.INT16, "tensor(int8)": onnx.TensorProto.INT8,
             "tensor(uint8)": onnx.TensorProto.UINT8, "tensor(uint16)": onnx.TensorProto.UINT16,
             "tensor(bool)": onnx.TensorProto.BOOL}


def untyped_values(model: onnx.ModelProto) -> list[str]:
    """Outputs of the main graph's nodes with no element type in value_info / graph outputs."""
    g = model.graph
    typed = {v.name for v in [*g.value_info, *g.output, *g.input]
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    typed.update(t.name for t in g.initializer)
    return [o for n in g.node for o in n.output if o and o not in typed]


def fill_untyped(model: onnx.ModelProto) -> int:
    """Write ORT's types of the untyped node outputs into `model.graph.value_info`; returns how many.
    Models above protobuf's 2 GB and graphs ORT cannot resolve are left as they are (best effort, as
    ONNX shape inference)."""
    names = untyped_values(model)
    if not names or ir.over_two_gb(model):
        return 0
    probe = declared_io.untyped_outputs_probe(model, names)
    try:
        outputs = runtime.session(probe, threads=1, optimize=False, quiet=True).get_outputs()
    except Exception:       # noqa: BLE001 - ORT cannot load it either; Synthesize will say so
        return 0
    wanted, filled = set(names), 0
    for out in outputs:
        elem = ORT_TYPES.get(out.type)
        if out.name not in wanted or elem is None:
            continue
        dims = None if not out.shape else [d if isinstance(d, int) else None for d in out.shape]
        declared_io.add_value_type(model, out.name, elem, dims)
        filled += 1
    return filled


def scalar_outputs(model: onnx.ModelProto) -> list[str]:
    """Graph outputs declared with a shape of no dimension (a scalar, or an exporter's placeholder)."""
    return [o.name for o in model.graph.output if o.type.HasField("tensor_type")
            and o.type.tensor_type.HasField("shape") and not o.type.tensor_type.shape.dim]


def fill_output_ranks(model: onnx.ModelProto) -> int:
    """Declare the rank ORT's optimized session resolves for the outputs declared scalar (module
    docstring); returns how many. Best effort: a model ORT cannot load, or one above 2 GB, is left."""
    names = scalar_outputs(model)
    if not names or ir.over_two_gb(model):
        return 0
    try:
        outputs = runtime.session(model, threads=1, quiet=True).get_outputs()
    except Exception:       # noqa: BLE001 - ORT cannot load it either; Synthesize will say so
        return 0
    resolved = {o.name: o.shape for o in outputs if o.shape}
    filled = 0
    for name in names:
        if resolved.get(name):
            declared_io.declare_dims(model, name, [d if isinstance(d, int) else None for d in resolved[name]])
            filled += 1
    return filled
