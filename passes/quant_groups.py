"""Decide where quantizers go and which of them must share an encoding or a bit-width.

Quantized nodes are the target's `weighted` ops with a constant float weight, and its `elementwise`
ops on float tensors (a weighted MatMul of two activations, as in attention, counts as elementwise).
Every float activation read or written by a quantized node gets a Q/DQ pair;
`passthrough` ops (Reshape, MaxPool, ...) whose input is quantized pass the same encoding to their
output, so the runtime can run them on 8-bit data:

    Conv ──Q──DQ── MaxPool ──Q──DQ── Conv        (both pairs share one scale / zero point)

A Relu (or Clip(0, hi)) that is the only reader of a quantized node's output is absorbed when the
target's activations are asymmetric: its output encoding has zero point at 0, which clips exactly
like the Relu, and the runtime fuses the Conv into its integer kernel.

A graph output computed by one of the target's `float_output_ops` (ORT CPU: Gemm / MatMul, whose
integer kernels QGemm / MatMulIntegerToFloat write float) stays float: a Q/DQ there adds no integer
kernel, only rounding and a clipped range (a classifier's top scores; BENCHMARKS.md, issue 13).

Bit-width groups: quantized nodes reading the same activation encoding must agree on its activation
bits, so they are merged (union-find); a group's weight bits apply to all its weighted layers.

Ops the target lists in [forms] (ORT CPU: MatMul with a constant 2-D weight, Gather from a constant
2-D table) are weighted layers encoded by an emit form instead (dfq_onnx/core/candidates.py): no
activation quantizer on their input or output, and elementwise ops next to them stay float unless a
statically quantized layer reads them -- not through a normalization (a LayerNorm, or the nodes
applying a decomposed one's statistics): a static head after a transformer's last LayerNorm leaves
its residual stream float. A CNN's classifier head written as MatMul is static like a Gemm
(passes/static_heads.py).

Which elementwise nodes stay float (normalization statistics, what a Log reads, what no static layer
reads, an activation function's inner ops on a target that fuses them): passes/float_regions.py.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from dfq_onnx.passes.float_regions import (
    activation_product,
    constant_affine_nodes,
    feeds_weighted,
    log_domain_nodes,
    statistics_nodes,
)
from dfq_onnx.passes.static_heads import is_static_head

from dfq_onnx.backends.act_precision import build_act_groups
from dfq_onnx.core.act_functions import activation_function_nodes
from dfq_onnx.core.graph_utils import (
    const_values,
    is_const,
    is_float,
    is_graph_output,
    node_label,
    weight_output_axis,
)
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, LayerSpec, QuantGroup, QuantSpec
from dfq_onnx.synth.preprocess import prefix_nodes

ABSORBABLE = ("Relu", "Clip")


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _weighted_spec(node: gs.Node, role: str) -> LayerSpec | None:
    if len(node.inputs) < 2 or not is_const(node.inputs[1]) or not is_float(node.inputs[1]):
        return None
    if node.op == "MatMul" and const_values(node.inputs[1]).ndim < 2:
        return None
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return None
    bias = node.inputs[2] if len(node.inputs) > 2 and is_const(node.inputs[2]) else None
    if bias is not None and node.op == "Gemm" and const_values(bias).ndim != 1:
        bias = None
    if bias is not None and len(bias.outputs) > 1:
        bias = None
    return LayerSpec(node=node_label(node), op=node.op, role=role, weight=node.inputs[1].name,
                     bias=bias.name if bias is not None else None, axis=weight_output_axis(node))


def _fused_attention(node: gs.Node) -> bool:
    """com.microsoft Attention with what QAttention takes: (x, W_qkv, bias, [mask_index, [past]]), equal
    q / k / v widths; a relative-position bias or a past length input has no quantized kernel."""
    extra = [t for t in node.inputs[5:] if t.name]
    return node.domain == "com.microsoft" and len(node.inputs) >= 3 and not extra \
        and "qkv_hidden_sizes" not in node.attrs and is_const(node.inputs[2])


def _fused_embedding(node: gs.Node) -> bool:
    """com.microsoft EmbedLayerNormalization with what QEmbedLayerNormalization takes: constant word /
    position tables, gamma and beta, segment ids with a constant segment table or neither (DistilBERT),
    no position-ids input and no embedding-sum output in use."""
    ins = list(node.inputs) + [gs.Variable.empty()] * max(0, 9 - len(node.inputs))
    named = [t.name != "" for t in ins]
    segment = named[1] and named[4] and is_const(ins[4]) and is_float(ins[4])
    tables = all(is_const(ins[i]) and is_float(ins[i]) for i in (2, 3, 5, 6))
    return node.domain == "com.microsoft" and tables and (segment or not (named[1] or named[4])) \
        and not named[8] \
        and not any(t.outputs for t in node.outputs[2:3])


def _form_spec(node: gs.Node, target) -> LayerSpec | None:
    """A MatMul [.., K] x W[K, N], com.microsoft Attention's W_qkv [D, 3D] or a Gather from a table [V, D]
    (axis 0) encoded by a target form."""
    if not target.forms_for(node.op) or len(node.inputs) < 2 or is_static_head(node, target):
        return None
    if node.op == "Attention" and not _fused_attention(node):
        return None
    if node.op == "EmbedLayerNormalization":
        return _fused_embedding(node) and LayerSpec(node=node_label(node), op=node.op, role="weighted",
                                                    weight=node.inputs[2].name, axis=0, weight_index=2,
                                                    form=True) or None
    index = 0 if node.op == "Gather" else 1
    w, other = node.inputs[index], node.inputs[1 - index]
    if not (is_const(w) and is_float(w) and const_values(w).ndim == 2) or is_const(other):
        return None
    if node.op == "Gather" and (node.attrs.get("axis", 0) != 0 or is_float(other)):
        return None
    if node.op in ("MatMul", "Attention") and not is_float(other):
        return None
    return LayerSpec(node=node_label(node), op=node.op, role="weighted", weight=w.name,
                     axis=0 if node.op == "Gather" else 1, weight_index=index, form=True)


def _absorbable(node: gs.Node) -> bool:
    if node.op == "Relu":
        return True
    if node.op == "Clip" and len(node.inputs) >= 2 and is_const(node.inputs[1]):
        return float(np.min(const_values(node.inputs[1]))) == 0.0
    return False


def quantized_layers(graph: gs.Graph, target) -> dict[str, LayerSpec]:
    layers = {}
    preprocessing = prefix_nodes(graph)          # the inputs' in-graph scale-and-shift stays float
    statistics, appliers = statistics_nodes(graph, target)
    form_read = {id(t) for n in graph.nodes if _form_spec(n, target) is not None for t in n.inputs}
    reach = feeds_weighted(graph, target, appliers, form_read)
    log_domain = log_domain_nodes(graph)         # what a Log reads: float (float_regions)
    folded = set() if target.activation_functions else activation_function_nodes(graph)
    folded |= constant_affine_nodes(graph, target)   # ops the backend folds into its neighbours' kernels
    for node in graph.nodes:
        role = target.role(node.op)
        if id(node) in preprocessing or id(node) in log_domain or id(node) in folded \
                or (role == "elementwise" and id(node) in statistics):
            continue
        form = _form_spec(node, target)
        if form is not None:
            layers[form.node] = form
        elif role == "elementwise" and id(node) not in reach:
            continue
        elif role == "weighted":
            spec = _weighted_spec(node, role)
            if spec and all(is_float(t) for t in node.inputs[:1]):
                layers[spec.node] = spec
            elif node.op == "MatMul" and id(node) in reach and activation_product(node) \
                    and target.activation_products:
                layers[node_label(node)] = LayerSpec(node=node_label(node), op=node.op, role="elementwise")
        elif role == "elementwise" and any(is_float(t) and not is_const(t) for t in node.inputs):
            if all(is_float(t) for t in node.inputs if t.name):
                layers[node_label(node)] = LayerSpec(node=node_label(node), op=node.op, role=role)
    return layers


def _fused_add_input(t: gs.Tensor, node: gs.Node, layers: dict, graph: gs.Graph, target) -> bool:
    """An Add input the target fuses into its producer: written by a quantized weighted op, read only here.

        Conv ──► Add ◄──Q──DQ── residual         (TensorRT: Conv + residual Add is one INT8 kernel)
        MatMul ──► Add ◄── bias (constant)        (OpenVINO: a fully connected layer with its bias)
    """
    if node.op != "Add" or not t.inputs or not (target.add_fuses_weighted_input or _bias_add(node, target)):
        return False
    prod = layers.get(node_label(t.inputs[0]))
    return prod is not None and prod.role == "weighted" and len(t.outputs) == 1 \
        and not is_graph_output(graph, t)


def _bias_add(node: gs.Node, target) -> bool:
    """An Add of a constant (a bias), on a target that fuses it into the weighted op writing its input."""
    return target.bias_add_fuses and node.op == "Add" and len(node.inputs) == 2 \
        and sum(is_const(t) for t in node.inputs) == 1


def _share_encodings(graph: gs.Graph, target, layers: dict, acts: dict, uf: _UnionFind) -> None:
    """Inputs and output of the target's shared-encoding ops (Concat) take one encoding; a fixed
    output encoding (Sigmoid on HTP) is never merged into another range."""
    for node in graph.nodes:
        if node.op not in target.shared_encoding_ops or node_label(node) not in layers:
            continue
        members = [t.name for t in [*node.inputs, *node.outputs[:1]] if t.name in acts
                   and not (t.inputs and t.inputs[0].op in target.fixed_outputs)]
        for other in members[1:]:
            uf.union(members[0], other)


def _read_quantized(t: gs.Tensor, layers: dict, target) -> bool:
    """Whether a quantized (non-form) layer reads `t`, directly or through passthrough ops."""
    todo, seen = [t], set()
    while todo:
        cur = todo.pop()
        for c in cur.outputs:
            spec = layers.get(node_label(c))
            if spec is not None and not spec.form:
                return True
            if target.role(c.op) == "passthrough" and id(c) not in seen:
                seen.add(id(c))
                todo.extend(o for o in c.outputs if is_float(o))
    return False


def _output_quantized(graph: gs.Graph, node: gs.Node, out: gs.Tensor, target) -> bool:
    """Whether `node`'s output `out` gets a Q/DQ: every tensor but graph outputs the target keeps float
    (all of them, or those of its `float_output_ops`; module docstring)."""
    return not is_graph_output(graph, out) or (target.quantize_graph_outputs
                                               and node.op not in target.float_output_ops)


def build_spec(graph: gs.Graph, target) -> QuantSpec:
    layers = quantized_layers(graph, target)
    nodes = {node_label(n): n for n in graph.nodes}
    acts: dict[str, None] = {}
    consts: list[tuple[str, str]] = []
    absorbed: dict[str, str] = {}
    for name, spec in layers.items():
        if spec.form:
            continue
        node = nodes[name]
        ins = node.inputs[:1] if spec.role == "weighted" else node.inputs
        fused = any(_fused_add_input(t, node, layers, graph, target) for t in ins) and _bias_add(node, target)
        for t in ins:
            if is_const(t) and spec.role == "elementwise" and is_float(t):
                if not fused:             # a fused bias stays float: the kernel adds it in its accumulator
                    consts.append((name, t.name))
            elif t.name and is_float(t) and not is_const(t) \
                    and not _fused_add_input(t, node, layers, graph, target):
                acts[t.name] = None
        if not target.quantize_outputs:   # inputs-only placement: the readers' inputs carry Q/DQ
            continue
        for out in node.outputs[:1]:
            readers = out.outputs
            bias = readers[0] if len(readers) == 1 and node_label(readers[0]) in layers else None
            if bias is not None and _bias_add(bias, target) \
                    and _fused_add_input(out, bias, layers, graph, target):
                continue                  # the bias Add's output carries this layer's output quantizer
            if (target.fuse_relu and not target.act_symmetric and len(readers) == 1
                    and readers[0].op in ABSORBABLE and _absorbable(readers[0])
                    and not is_graph_output(graph, out)
                    and _output_quantized(graph, node, readers[0].outputs[0], target)):
                absorbed[node_label(readers[0])] = out.name
                out = readers[0].outputs[0]
            read = target.unread_outputs or is_graph_output(graph, out)
            if (read or _read_quantized(out, layers, target)) and _output_quantized(graph, node, out, target):
                acts[out.name] = None
    uf = _UnionFind()
    for node in graph.nodes:  # topological order: passthrough chains propagate
        if target.role(node.op) == "passthrough" and node.inputs and node.inputs[0].name in acts:
            for out in node.outputs:     # Split: every output shares the input's encoding
                if is_float(out) and (target.quantize_outputs or out.name in acts
                                      or any(node_label(c) in layers for c in out.outputs)):
                    acts[out.name] = None
                    uf.union(node.inputs[0].name, out.name)
    _share_encodings(graph, target, layers, acts, uf)
    names = tuple(acts)
    return QuantSpec(layers=layers, act_tensors=names, encoding_of={t: uf.find(t) for t in names},
                     absorbed=absorbed, const_inputs=tuple(consts))


def build_groups(graph: gs.Graph, spec: QuantSpec) -> list[QuantGroup]:
    nodes = {node_label(n): n for n in graph.nodes}
    uf = _UnionFind()
    reads: dict[str, list[str]] = {}
    for name, layer in spec.layers.items():
        uf.find(name)
        ins = nodes[name].inputs[:1] if layer.role == "weighted" else nodes[name].inputs
        for t in ins:
            if t.name in spec.encoding_of:
                cls = spec.encoding_of[t.name]
                reads.setdefault(cls, []).append(name)
    for name, layer in spec.layers.items():  # layers sharing a weight share its bit-width
        if layer.weight is not None:
            reads.setdefault("weight:" + layer.weight, []).append(name)
    for readers in reads.values():
        for other in readers[1:]:
            uf.union(readers[0], other)
    members: dict[str, list[str]] = {}
    for name in spec.layers:  # graph order
        members.setdefault(uf.find(name), []).append(name)
    groups = []
    for i, names in enumerate(members.values()):
        weighted = tuple(n for n in names if spec.layers[n].role == "weighted")
        acts = tuple(sorted({t.name for n in names for t in nodes[n].inputs
                             if t.name in spec.encoding_of}))
        params = sum(int(np.prod(nodes[n].inputs[spec.layers[n].weight_index].shape)) for n in weighted)
        groups.append(QuantGroup(id=f"g{i}", layers=weighted, ops=tuple(names), activations=acts,
                                 params=params))
    return groups


class FindQuantGroups(Pass):
    """Analysis: quantized nodes, activation quantizers, shared encodings and bit-width groups."""

    name = "FindQuantGroups"

    def run(self, state: CompileState) -> PassResult:
        spec = build_spec(state.graph, state.target)
        state.spec = spec
        state.groups = build_groups(state.graph, spec)
        state.act_groups = build_act_groups(state.graph, spec, state.target)
        n_w = sum(1 for s in spec.layers.values() if s.role == "weighted")
        marked = log_domain_nodes(state.graph)
        log_domain = [node_label(n) for n in state.graph.nodes if id(n) in marked]
        if log_domain:         # recorded, not silent: what a Log reads stays float (float_regions)
            state.report.notes["float_before_log"] = log_domain
        return PassResult(False, f"{n_w} weighted + {len(spec.layers) - n_w} other quantized nodes, "
                                 f"{len(spec.act_tensors)} activations, {len(state.groups)} groups"
                                 + (f"; {len(log_domain)} nodes a Log reads left float" * bool(log_domain)))
