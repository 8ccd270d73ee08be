"""What Normalize refuses, checked before anything is changed: already-quantized models (Q/DQ or
QLinear* nodes), bfloat16 tensors, custom-domain ops ORT cannot run, and control flow whose body holds
quantizable layers -- an If whose condition folds to a constant is checked again after folding (it has
been replaced by its branch by then). A graph that is only an If on a boolean model input, or on a
condition computed from scalar inputs (silero-vad's sample rate), with quantizable layers in both
branches (Optimum's merged decoder) never gets here: the API compiles its branches one by one
(core/branches.py); such an If with other nodes around it is refused, and the error names the files
to use or the input to pin.
"""

from __future__ import annotations

from dfq_onnx.core import ir
from dfq_onnx.core.branches import QUANTIZABLE, condition_sources
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.scalar_inputs import pin_hint, scalar_names

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                 "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd"}
CONTROL_FLOW = {"If", "Loop", "Scan"}
KNOWN_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml"}
LOW_PRECISION = {16: "bfloat16"}      # float16 is widened (dfq_onnx/core/float16.py)


def check_supported(model) -> None:
    """Raise UnsupportedModelError naming the first node or tensor the compiler refuses."""
    g = model.graph
    if not g.node:
        raise UnsupportedModelError(f"graph '{g.name}' has no nodes: there is nothing to quantize; check "
                                    "that the export wrote the network")
    for node in g.node:
        where = f"node '{node.name or node.output[0]}' ({node.op_type})"
        if node.op_type in QUANTIZED_OPS:
            raise UnsupportedModelError(f"{where}: the model is already quantized; pass the FP32 model")
        if (node.op_type in CONTROL_FLOW and _subgraph_ops(node) & QUANTIZABLE
                and not (node.op_type == "If" and _constant_condition(model, node))):
            _refuse_control_flow(where, _subgraph_ops(node) & QUANTIZABLE,
                                 _merged_models(g, node) or _scalar_condition(model, node))
        if node.domain not in KNOWN_DOMAINS:
            raise UnsupportedModelError(f"{where}: custom domain '{node.domain}' is unknown to ONNX Runtime, "
                                        "so the model cannot be calibrated; export it with standard ops")
    tensors = [(i.name, i.type.tensor_type.elem_type) for i in list(g.input) + list(g.output)]
    tensors += [(t.name, t.data_type) for t in g.initializer]
    for name, elem in tensors:
        if elem in LOW_PRECISION:
            raise UnsupportedModelError(f"tensor '{name}' is {LOW_PRECISION[elem]}: dfq-onnx quantizes FP32 "
                                        "and FP16 models; convert the model to float32 first")


def nothing_to_quantize(model, profile) -> list[str] | None:
    """The model's op types when none of them is a layer `profile` quantizes (its weighted ops and the
    ops with `[forms]`, e.g. Gather of an embedding table), in the main graph or any subgraph; else None.
    Such a model (sklearn-onnx's trees and linear models: TreeEnsembleClassifier, LinearClassifier,
    Scaler, ZipMap) compiles to itself: the API writes it unchanged, without importing its graph (a
    LightGBM ensemble of 5 M nodes held 5.4 GB as graph attributes before anything was decided)."""
    ops: set[str] = set()
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            ops.add(node.op_type)
            stack.extend(ir.proto_subgraphs(node))
    if any(profile.role(op) == "weighted" or profile.forms_for(op) for op in ops):
        return None
    return sorted(ops)


def _gs_subgraph_ops(node) -> set[str]:
    return {n.op for g in node.subgraphs(recursive=True) for n in g.nodes}


def check_control_flow(graph) -> None:
    """Raise UnsupportedModelError for control flow around quantizable layers left after constant folding
    (an If whose condition folds to a constant has been replaced by its branch by then)."""
    for node in graph.nodes:
        inside = _gs_subgraph_ops(node) & QUANTIZABLE if node.op in CONTROL_FLOW else set()
        if inside:
            _refuse_control_flow(f"node '{node.name or node.outputs[0].name}' ({node.op})", inside)


def _merged_models(g, node) -> str | None:
    """What to quantize instead when `node` is an If on a model input with quantizable layers in both
    branches: two models merged behind a flag (Optimum's decoder_model_merged.onnx)."""
    branches = [a.g for a in node.attribute if a.HasField("g")]
    if node.op_type != "If" or node.input[0] not in {i.name for i in g.input} or not all(
            {n.op_type for n in b.node} & QUANTIZABLE for b in branches):
        return None
    return (f"its condition is the model input '{node.input[0]}', so the branches are two models merged into "
            "one (Hugging Face Optimum's decoder_model_merged.onnx: quantize decoder_model.onnx and "
            "decoder_with_past_model.onnx, exported beside it, instead)")


def _scalar_condition(model, node) -> str | None:
    """What to do when an If's condition is computed from a scalar model input (silero-vad's sample
    rate): pin the input, naming the values the graph compares it with."""
    if node.op_type != "If":
        return None
    scalars = set(scalar_names(model))
    name = next((t for t in condition_sources(model.graph, node.input[0])[1] if t in scalars), None)
    if name is None:
        return None
    return (f"its condition comes from the scalar input '{name}': to compile the branch one value "
            f"selects, {pin_hint(model, name)}")


def _refuse_control_flow(where: str, ops: set[str], hint: str | None = None) -> None:
    hint = hint or "export the model without control flow (unrolled) around them"
    raise UnsupportedModelError(f"{where}: control flow around quantizable layers ({', '.join(sorted(ops))}) "
                                f"is not supported; {hint}")


def _subgraph_ops(node) -> set[str]:
    return {op for g in ir.proto_subgraphs(node) for n in g.node for op in (n.op_type, *_subgraph_ops(n))}


def _constant_condition(model, node) -> bool:
    """Whether an If's condition is computed from initializers and Constant nodes alone (it folds)."""
    return not condition_sources(model.graph, node.input[0])[1]
