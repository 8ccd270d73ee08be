"""Normalize an exported model into the graph every later pass expects.

Steps, in order (each is recorded in the report):

1. refuse what cannot be quantized: already-quantized models (Q/DQ or QLinear* nodes), bfloat16
   tensors, custom-domain ops ORT cannot run, control flow whose body holds quantizable layers; a float16
   model is widened to float32 once imported (`dfq_onnx.core.float16`; RestoreInterface gives the written
   model the source's float16 inputs / outputs back);
2. drop initializers listed as graph inputs (IR < 4 exports) so they become constants;
3. dimensions written as -1 (Paddle's spelling of a dynamic dimension) become symbolic, as ONNX spells
   one ("N" for the batch axis), in the written model's declarations too; graph outputs declared
   scalar (`shape {}`, PaddleOCR v5's exports) take the rank ONNX Runtime's optimized session resolves
   (`backends.runtime_types.fill_output_ranks`), so the metric and the synthesis read them by their shape
   and the written model declares it;
4. upgrade the opset to what the requested encodings need (13 for per-channel, 21 for int4/16-bit);
5. shape inference, then constant folding of shape subgraphs and `Constant` nodes into initializers
   (Paddle keeps all weights as Constant nodes; PyTorch computes pads with Shape/Gather/Concat);
6. canonical forms: two-input `Sum` becomes `Add` (Caffe2 exports), inference-time `Dropout` and
   `Identity` are removed, ONNX Runtime's fused layers of a saved optimized model (com.microsoft
   FusedConv / FusedGemm / FusedMatMul) are written back as Conv / Gemm / MatMul and their activation
   (`dfq_onnx.core.unfuse`), so later passes and the runtime's fusions see one spelling;
7. shapes re-inferred on the folded graph; constant-zero `Pad` folded into the Conv / AveragePool
   reading it, shape-computed Reshape targets made constant and the version converter's flattened
   Softmax unwrapped, iterated with re-inference (`dfq_onnx.core.rewrites`), a token-wise linear layer
   written flatten -> Gemm -> unflatten (GPT-2's Conv1D) made one MatMul + bias Add
   (`dfq_onnx.core.token_linear`), constant per-channel
   Mul / Add / Sub / Div folded into the layer producing them (`dfq_onnx.core.affine_fold`), scalar
   Mul / Div into the layers reading them and a layer's HardSigmoid into the layer + Clip(0, 1)
   (`dfq_onnx.core.reader_fold`), so the runtime fuses the quantized graph as it fuses the float one;
8. user hints for dynamic input dimensions (`input_shapes`, the batch dimension left free) size the
   calibration only: the graph's tensors are then *annotated* with the shapes inferred for the hinted
   sizes, while the computation stays what it was. Folding and the rewrites run before the hints are
   applied, so a shape subgraph that reads a dynamic dimension (Shape -> Gather -> Reshape) is never
   baked into a constant, and the written model keeps the source's dynamic dimensions
   (`declared_io.carry_over` restores its declared inputs and outputs).
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_graphsurgeon as gs
import onnxruntime as ort
from dfq_onnx.passes.supported import check_control_flow, check_supported

from dfq_onnx.backends.memory import release
from dfq_onnx.backends.runtime_types import fill_output_ranks, fill_untyped
from dfq_onnx.core import batch_axis, constant_fold, float16, ir, rewrites, unbatched
from dfq_onnx.core.affine_fold import fold_affine
from dfq_onnx.core.errors import UnsupportedModelError, UsageError
from dfq_onnx.core.graph_utils import is_float, reroute
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.reader_fold import fold_hard_sigmoid, fold_into_readers
from dfq_onnx.core.scalar_inputs import check_scalar_inputs
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.token_linear import unflatten_token_gemms
from dfq_onnx.core.unfuse import unfuse_contrib
from dfq_onnx.synth.lengths import length_inputs, mask_hints

log = logging.getLogger(__name__)

RELEASE_BYTES = 1 << 26   # above this, the freed protos are collected and their heap given back at once


def symbolic_dims(model) -> None:
    """Step 3: input / output dimensions written as -1 become symbolic ("N" for the batch axis)."""
    for t in [*model.graph.input, *model.graph.output]:
        for i, dim in enumerate(t.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = "N" if i == 0 else f"{t.name}_dim{i}"


def declared_form(model) -> None:
    """Steps 2 and 3 on `model` in place: initializers listed as inputs dropped, -1 dimensions symbolic
    (what the written model declares; the report's FP32 session reads the source in this form)."""
    ir.drop_initializer_inputs(model)
    symbolic_dims(model)


def check_batch_axes(model, rnn_states=()) -> None:
    """Samples are batched along axis 0 of every input (synthesis, calibration, scoring). An input that
    carries the batch dimension elsewhere -- an RNN state [layers, batch, hidden] beside an input
    [batch, time], the same symbolic name on another axis -- would be fed a wrong batch: say so once
    (scalar inputs: `check_scalar_inputs`). `rnn_states`: inputs found to be an RNN's initial state
    [layers, batch, hidden], which the compile reads batch-major (`core/batch_axis.py`)."""
    inputs = [(t.name, [d.dim_param if d.HasField("dim_param") else None
                        for d in t.type.tensor_type.shape.dim]) for t in model.graph.input]
    # a name used on several axes of one input is an exporter's placeholder ("?"), not a batch name
    batch = {dims[0] for _, dims in inputs if dims and dims[0] and dims.count(dims[0]) == 1}
    for name, dims in inputs:
        axes = [i for i, d in enumerate(dims) if i > 0 and d in batch and dims.count(d) == 1]
        if axes and not (axes == [1] and name in rnn_states):
            raise UnsupportedModelError(
                f"input '{name}' carries the batch dimension '{dims[axes[0]]}' on axis {axes[0]}, not 0: "
                "samples are batched along axis 0 of every input, so models with such inputs (e.g. RNN "
                "states [layers, batch, hidden]) are not supported yet")


def annotate_shapes(graph, hints: dict[str, tuple[int, ...]]) -> None:
    """Give the graph's inputs the hinted sizes (dynamic non-batch dimensions only) and its variables
    the shapes inferred from them (analysis and calibration read them); the nodes are not touched, so
    nothing computed from a dynamic dimension becomes a constant. The shapes come from a copy whose
    shape subgraphs and Reshape targets are folded at the hinted sizes (inference alone stops at a
    Reshape whose target is computed). Unknown input names and wrong ranks are usage errors."""
    if not hints:
        return
    inputs = {t.name: t for t in graph.inputs}
    for name, shape in hints.items():
        if name not in inputs:
            raise UsageError(f"--input-shape names '{name}', but the model's inputs are {', '.join(inputs)}")
        dims = inputs[name].shape
        if dims is not None and len(dims) != len(shape):
            raise UsageError(f"--input-shape {name}: rank {len(shape)} given, the model's input has rank "
                             f"{len(dims)}")
        dims = dims if dims is not None else [None] * len(shape)
        fixed = [i for i, (d, v) in enumerate(zip(dims, shape))
                 if i > 0 and isinstance(d, int) and d > 0 and d != int(v)]
        if fixed:      # calibrating at another size than the graph declares fails in every ORT call
            k = fixed[0]
            raise UsageError(f"--input-shape {name}: axis {k} is {shape[k]}, but the model fixes it at "
                             f"{dims[k]} ({list(dims)}); --input-shape sizes dynamic dimensions "
                             "only: make that dimension dynamic in the model (e.g. onnx.tools."
                             "update_model_dims) to calibrate and run it at another size")
        inputs[name].shape = [d if i == 0 or (isinstance(d, int) and d > 0) else int(v)
                              for i, (d, v) in enumerate(zip(dims, shape))]
    probe = rewrites.settle_shapes(ir.copy_graph(graph))
    known = {t.name: t.shape for t in probe.tensors().values() if isinstance(t, gs.Variable)}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and known.get(t.name) is not None:
            t.shape = known[t.name]


def _bypass(graph, node) -> bool:
    """Remove a single-input identity-like node, keeping graph output names intact."""
    src, dst = node.inputs[0], node.outputs[0]
    if any(o is dst for o in graph.outputs):
        if any(i is src for i in graph.inputs) or any(o is src for o in graph.outputs):
            return False
        producer = src.inputs[0] if src.inputs else None
        if producer is None:
            return False
        node.outputs.clear()
        node.inputs.clear()
        reroute(src, dst)
        producer.outputs[producer.outputs.index(src)] = dst
        return True
    reroute(dst, src)
    node.outputs.clear()
    node.inputs.clear()
    return True


def name_nodes(graph) -> int:
    """Give every unnamed (or duplicate-named) node a unique name: passes key layers by node name."""
    taken: set[str] = set()
    renamed = 0
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in taken:
            base = f"{node.op}_{i}"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            renamed += 1
        taken.add(node.name)
    return renamed


def canonicalize(graph) -> dict[str, int]:
    """Sum(a, b) -> Add(a, b); drop inference Dropout / Identity and float32 -> float32 Casts (a float16
    model's casts once widened); ONNX Runtime's fused layers (FusedConv, FusedGemm, FusedMatMul) back to
    the standard ops (`dfq_onnx.core.unfuse`). Returns counts of rewrites."""
    counts = {"Sum->Add": 0, "Dropout removed": 0, "Identity removed": 0, "Cast removed": 0,
              "ORT fused layer unfused": unfuse_contrib(graph)}
    for node in list(graph.nodes):
        if node.op == "Sum" and len(node.inputs) == 2:
            node.op = "Add"
            counts["Sum->Add"] += 1
        elif node.op in ("Dropout", "Identity") and node.inputs:
            if node.op == "Dropout" and (len(node.outputs) > 1 and node.outputs[1].outputs):
                continue
            if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
                continue  # explicit training_mode input
            if _bypass(graph, node):
                counts[f"{node.op} removed"] += 1
        elif node.op == "Cast" and node.attrs.get("to") == 1 and node.inputs and is_float(node.inputs[0]):
            counts["Cast removed"] += _bypass(graph, node)
    graph.cleanup().toposort()
    return {k: v for k, v in counts.items() if v}


def fusable_forms(graph) -> dict[str, int]:
    """Step 7: shapes re-inferred, then the rewrites that let the runtime fuse the quantized graph."""
    ir.refresh_shapes(graph)
    counts = {"Pad folded": rewrites.fold_zero_pads(graph), "Reshape target constant": 0,
              "Softmax unwrapped": 0}
    for _ in range(16):     # a constant target or one Softmax gives the next Reshape's input its shape
        folded = rewrites.fold_shape_reshapes(graph)
        unwrapped = rewrites.fold_flattened_softmax(graph)
        counts["Reshape target constant"] += folded
        counts["Softmax unwrapped"] += unwrapped
        graph.cleanup().toposort()
        if not (folded or unwrapped) or not ir.refresh_shapes(graph):
            break
    counts["token-wise Gemm unflattened"] = unflatten_token_gemms(graph)
    counts["no-op Reshape/Flatten removed"] = sum(_bypass(graph, n) for n in rewrites.noop_reshapes(graph))
    counts["Mul/Add folded into layer"] = fold_affine(graph)
    counts["scalar Mul/Div folded into readers"] = fold_into_readers(graph)
    counts["HardSigmoid folded into layer"] = fold_hard_sigmoid(graph)
    return counts


class Normalize(Pass):
    """Load-time normalization: validation, opset upgrade, shape inference, constant folding."""

    name = "Normalize"

    def __init__(self, required_opset: int = 13):
        self.required_opset = required_opset

    def run(self, state: CompileState) -> PassResult:
        model = state.source
        if model is None:  # already normalized
            return PassResult(False, "already normalized")
        check_supported(model)
        check_scalar_inputs(model)
        state.source_opset = ir.opset_version(model)
        declared_form(model)
        ranked = fill_output_ranks(model)     # outputs declared scalar: the rank ORT resolves
        state.declared = ir.declarations(model)
        model = ir.upgrade_opset(model, max(self.required_opset, state.target.min_opset))
        model = ir.infer_shapes(model)
        typed_by_ort = fill_untyped(model)
        ort.set_default_logger_severity(3)
        graph = ir.to_graph(model)
        state.low_precision_io = float16.widen(graph)
        before = len(graph.nodes)
        graph = constant_fold.fold_constants(graph).toposort()
        check_control_flow(graph)
        rewritten = canonicalize(graph)
        rewritten["types from ONNX Runtime"] = typed_by_ort
        rewritten["output ranks from ONNX Runtime (declared scalar)"] = ranked
        rewritten["nodes named"] = name_nodes(graph)
        rewritten.update(fusable_forms(graph))
        graph.cleanup().toposort()
        rewritten = {k: v for k, v in rewritten.items() if v}
        state.batch_axis1 = batch_axis.state_inputs(graph)      # read on the declared dimensions
        check_batch_axes(model, state.batch_axis1)
        declared = {t.name: t.shape[1] for t in graph.inputs if t.name in state.batch_axis1}
        hints = state.options.input_shapes
        state.unbatched = unbatched.unbatched_inputs(graph)
        if state.unbatched:
            hints = unbatched.sized_hints(graph, state.unbatched, hints)
            state.options = dataclasses.replace(state.options, input_shapes=hints)   # the compile's layout
            unbatched.add_batch_axis(graph)
            rewritten["batch axis of one added (the model has none)"] = len(state.unbatched)
            state.report.notes["unbatched_inputs"] = list(state.unbatched)
        state.length_inputs = length_inputs(graph)      # read before the hints size the dynamic axes
        if sized := mask_hints(state.length_inputs, hints):     # a mask is sized with its float input
            hints = {**hints, **sized}
            state.options = dataclasses.replace(state.options, input_shapes=hints)
        annotate_shapes(graph, hints)
        if state.batch_axis1:
            batch_axis.make_batch_major(graph, declared)
            state.output_batch_axes = batch_axis.output_axes(graph)
            rewritten["inputs batched on axis 1 (RNN state)"] = len(state.batch_axis1)
            state.report.notes["batch_axis1_inputs"] = list(state.batch_axis1)
        state.graph = graph
        state.source = None
        # the graph now holds the weights: no reference into the protos (source, inferred) may keep them
        ir.detach_from_protos(graph)
        opset, size = ir.opset_version(model), ir.constant_bytes(graph)
        del model
        # fold_constants leaves a copy of the graph in reference cycles that share the constants' arrays
        # (memory maps of large external weights): free it now, not at some later collection; and give
        # the freed protos' heap back to the system.
        if size > RELEASE_BYTES:
            release()
        state.report.model.update({"opset_in": state.source_opset, "opset": opset, "canonicalized": rewritten,
                                   "nodes_in": before, "nodes": len(graph.nodes)})
        return PassResult(True, f"opset {state.source_opset}->{opset}, {before}->{len(graph.nodes)} nodes")
