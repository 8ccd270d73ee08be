"""Scalar (rank-0) inputs: a sample rate, a flag, how many positions' logits to keep.

Samples are batched along axis 0 of every input, so a scalar has no batch to take and no value the
compile could sample. A model that is one If between two networks on a condition computed from it is
compiled network by network (core/branches.py); anywhere else the user pins it (`--input-value
NAME:VALUE`, `declared_io.pin_inputs`). Until then one error names the input, the option, and the values the
graph itself compares the input with -- the branches it selects between (silero-vad v5: `If(sr ==
16000)` selects the 16 kHz network).
"""

from __future__ import annotations

import numpy as np
import onnx

from dfq_onnx.core import ir
from dfq_onnx.core.errors import UnsupportedModelError

COMPARISONS = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"}


def _constants(graph: onnx.GraphProto, into: dict) -> None:
    """Constant values by name: initializers and Constant nodes of `graph` and its subgraphs."""
    for t in graph.initializer:
        into[t.name] = ir.tensor_to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            a = node.attribute[0]
            if a.name == "value":
                into[node.output[0]] = ir.tensor_to_array(a.t)
            elif a.name in ("value_int", "value_float"):
                into[node.output[0]] = np.asarray(a.i if a.name == "value_int" else a.f)
        for sub in ir.proto_subgraphs(node):
            _constants(sub, into)


def scalar_candidates(model: onnx.ModelProto, name: str) -> list[tuple[str, list, str | None]]:
    """Where the graph compares input `name` (or a Cast of it) with a constant: (comparison node, the
    constant's values, the If whose condition the comparison is, if one)."""
    consts: dict = {}
    _constants(model.graph, consts)
    found = []

    def visit(graph: onnx.GraphProto, aliases: set[str]) -> None:
        aliases = set(aliases)
        for node in graph.node:
            if node.op_type == "Cast" and node.input and node.input[0] in aliases:
                aliases.add(node.output[0])
            other = [i for i in node.input if i not in aliases]
            if node.op_type in COMPARISONS and len(other) == 1 and other[0] in consts:
                cond = next((n.name or n.output[0] for n in graph.node
                             if n.op_type == "If" and n.input and n.input[0] == node.output[0]), None)
                vals = [v.item() for v in np.asarray(consts[other[0]]).reshape(-1)[:4]]
                found.append((node.name or node.output[0], vals, cond))
            for sub in ir.proto_subgraphs(node):
                visit(sub, aliases)

    visit(model.graph, {name})
    return found


def scalar_names(model: onnx.ModelProto) -> list[str]:
    """The model's rank-0 inputs (initializers listed as inputs, IR < 4, excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [t.name for t in model.graph.input if t.name not in inits and t.type.HasField("tensor_type")
            and t.type.tensor_type.HasField("shape") and not t.type.tensor_type.shape.dim]


def pin_hint(model: onnx.ModelProto, name: str) -> str:
    """'pass --input-value NAME:VALUE (...)' with the values the graph compares the input with."""
    found = scalar_candidates(model, name)
    seen = "; ".join(f"the graph compares it with {', '.join(map(str, vals))} at node '{node}'"
                     + (f", the condition of If '{cond}'" if cond else "") for node, vals, cond in found)
    example = found[0][1][0] if found else "VALUE"
    return (f"pass --input-value {name}:{example}" + (f" ({seen})" if seen else " with the value your code "
            "feeds") + "; the written model keeps the input but computes with that value")


def check_scalar_inputs(model: onnx.ModelProto) -> None:
    """One error for the model's unpinned scalar inputs: the first named, with the values the graph
    compares it with (the candidates for `--input-value`)."""
    scalars = scalar_names(model)
    if scalars:
        also = f" (also scalar: {', '.join(scalars[1:])})" if scalars[1:] else ""
        raise UnsupportedModelError(
            f"input '{scalars[0]}' is a scalar (rank 0){also}: samples are batched along axis 0 of every "
            f"input, so its value must be given: {pin_hint(model, scalars[0])}")
