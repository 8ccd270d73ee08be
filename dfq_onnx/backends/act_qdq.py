"""Activation encodings and their Q/DQ for a quantization spec: one code path for EmitQDQ and the probe.

Encoding classes: tensors that must share one encoding (`spec.encoding_of`, e.g. the inputs of a
Concat) get one, from the union of their ranges widened to contain 0, at the widest bits of a member:

    lo = min_m lo_m,  hi = max_m hi_m,  b = max_m bits_m  ->  activation_encoding(target, lo, hi, b)

unless a member is the output of an op the target fixes (target [fixed_outputs], e.g. Sigmoid on QNN
HTP): then scale = span / 2^b and zero point = -min / scale, whatever was measured. Elementwise float
constants (`spec.const_inputs`) are quantized at the target's default activation bits from their
own min/max.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.qdq import (
    Encoding,
    absorb_activations,
    activation_encoding,
    insert_activation_qdq,
    replace_with_dq,
)
from dfq_onnx.core import numerics
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.state import Range


def fixed_encoding(tensors: Mapping[str, gs.Tensor], target, members: list[str],
                   bits: int) -> Encoding | None:
    """The target's fixed output encoding when a member is the output of such an op, else None."""
    for t in members:
        prod = tensors[t].inputs[0] if t in tensors and tensors[t].inputs else None
        fixed = target.fixed_encoding(prod.op, bits) if prod is not None else None
        if fixed is not None:
            return Encoding(np.float32(fixed[0]), np.asarray(fixed[1]), target.act_dtype(bits), bits)
    return None


def union_encoding(tensors: Mapping[str, gs.Tensor], target, members, ranges: Mapping[str, Range],
                   bits: int) -> Encoding:
    """One encoding for `members` at `bits`: the target's fixed one, else their ranges' union's."""
    missing = [t for t in members if t not in ranges]
    if missing:
        raise UnsupportedModelError(f"no activation range for tensor '{missing[0]}'")
    lo, hi = min(ranges[t].lo for t in members), max(ranges[t].hi for t in members)
    return fixed_encoding(tensors, target, members, bits) or activation_encoding(target, lo, hi, bits)


def class_encodings(graph: gs.Graph, spec, ranges: Mapping[str, Range], target,
                    bits: Mapping[str, int] | int) -> dict[str, Encoding]:
    """Encoding of every quantized activation tensor of `spec` (see the module docstring); `bits` is one
    width for all or a width per tensor."""
    classes: dict[str, list[str]] = {}
    for t in spec.act_tensors:
        classes.setdefault(spec.encoding_of[t], []).append(t)
    out, tensors = {}, graph.tensors()
    for rep, members in classes.items():
        b = bits if isinstance(bits, int) else max(bits[t] for t in members)
        out[rep] = union_encoding(tensors, target, members, ranges, b)
    return {t: out[spec.encoding_of[t]] for t in spec.act_tensors}


def group_encodings(graph: gs.Graph, act_groups, ranges: Mapping[str, Range], target,
                    bits) -> dict[str, dict[int, Encoding]]:
    """Activation group id -> {b: the group's encoding at b bits} for each candidate width in `bits`."""
    tensors = graph.tensors()
    return {ag.id: {b: union_encoding(tensors, target, ag.tensors, ranges, b) for b in bits}
            for ag in act_groups}


def float_readers(graph: gs.Graph, spec, target) -> dict[str, frozenset[str]]:
    """Quantized tensor -> labels of its readers that read it float: on a target with `[placement]
    quantized_reads_only` (OpenVINO), every reader that is neither a quantized node nor a passthrough op
    carrying the encoding on (a residual Add beside the MatMuls reading a LayerNorm output: the
    quantizer buys it no integer kernel, only rounding); {} elsewhere (every reader reads the Q/DQ). A
    passthrough's output (a Slice of a quantized tensor) keeps every reader on its Q/DQ: its values are
    on that grid already, and the backend keeps the chain in low precision (CIFAR ResNets' shortcut
    Slice -> Pad, byte-identical)."""
    if not target.quantized_reads_only:
        return {}
    out, tensors = {}, graph.tensors()

    def quantized(n: gs.Node) -> bool:
        spec_n = spec.layers.get(node_label(n))
        if spec_n is not None and not spec_n.form:
            return True
        return target.role(n.op) == "passthrough" and any(o.name in spec.encoding_of for o in n.outputs)

    def carried(t: gs.Tensor) -> bool:    # a passthrough's output: its values are on the input's grid
        return bool(t.inputs) and target.role(t.inputs[0].op) == "passthrough" \
            and t.inputs[0].inputs[0].name in spec.encoding_of

    for name in spec.act_tensors:
        t = tensors.get(name)
        keep = frozenset(node_label(n) for n in t.outputs if not quantized(n)) \
            if t is not None and not carried(t) else frozenset()
        if keep:
            out[name] = keep
    return out


def absorbed_at_bits(graph: gs.Graph, spec, encodings: Mapping[str, Encoding], target):
    """The spec with the Relu/Clip nodes whose output encoding has bits the target does not absorb them
    at (`[activation] fuse_relu_bits`) left in the graph: the Q/DQ then sits on their output. OpenVINO
    2026.4 drops the clamp of a 16-bit FakeQuantize after a convolution, so a ReLU absorbed into a uint16
    zero-point-0 encoding was lost there (ResNet-20 `--act-bits 16`: top-1 = FP32 on 0.07 of images in
    OpenVINO, 0.99 in ONNX Runtime; BENCHMARKS.md, session 20)."""
    if not target.fuse_relu_bits:
        return spec
    nodes = {node_label(n): n for n in graph.nodes}
    keep = {}
    for act, src in spec.absorbed.items():
        out = nodes[act].outputs[0].name
        rep = spec.encoding_of.get(out)
        if rep is None or target.absorbs_relu_at(encodings[rep].bits):
            keep[act] = src
    return spec if len(keep) == len(spec.absorbed) else dataclasses.replace(spec, absorbed=keep)


def insert_qdq(graph: gs.Graph, spec, encodings: Mapping[str, Encoding], target) -> dict[str, Encoding]:
    """Absorb the spec's Relu/Clip, put a Q/DQ pair (constants shared per class) on every activation
    tensor (read through it by the readers `float_readers` does not keep float) and quantize the
    elementwise constants; returns DequantizeLinear output name -> encoding."""
    keep = float_readers(graph, spec, target)
    absorb_activations(graph, absorbed_at_bits(graph, spec, encodings, target))
    tensors, shared, by_dq = graph.tensors(), {}, {}
    taken = set(tensors)
    for name in spec.act_tensors:
        rep = spec.encoding_of[name]
        if rep not in shared:
            shared[rep] = encodings[rep].constants(_free_base(rep, taken))
        by_dq[insert_activation_qdq(graph, tensors[name], encodings[rep], shared[rep],
                                    keep.get(name, frozenset())).name] = encodings[rep]
    nodes = {node_label(n): n for n in graph.nodes}
    for node_name, const_name in spec.const_inputs:
        quantize_constant(graph, nodes[node_name], const_name, target)
    return by_dq


def _free_base(base: str, taken: set[str]) -> str:
    """`base`, or `base`_1, _2, ... when a tensor already bears `<base>_scale` / `<base>_zero_point`: a
    dynamic MatMul's combined scale is `<node>_scale`, and a converter that names each output after its
    node (madmom's 'matmul_60' writes 'matmul_60') would give that output's Q/DQ scale the same name --
    two tensors of one name, wired as one in the written model (the MatMul read the activation scale:
    0 dB vs FP32)."""
    name, k = base, 1
    while f"{name}_scale" in taken or f"{name}_zero_point" in taken:
        name, k = f"{base}_{k}", k + 1
    taken.update((f"{name}_scale", f"{name}_zero_point"))
    return name


def quantize_constant(graph: gs.Graph, node: gs.Node, const_name: str, target) -> None:
    """A float constant input of an elementwise op through DequantizeLinear at the default bits."""
    for i, t in enumerate(node.inputs):
        if t.name == const_name and isinstance(t, gs.Constant):
            values, bits = const_values(t).astype(np.float32), target.default_act_bits
            enc = activation_encoding(target, float(values.min()), float(values.max()), bits)
            q = numerics.quantize(values, enc.scale, enc.zero_point, bits, enc.dtype.startswith("int"))
            replace_with_dq(graph, node, i, q, enc, f"{node_label(node)}_{const_name}")
