"""The span of a probability output's logits: a Sigmoid or Softmax writing a graph output can reach 1.

Saliency, segmentation and matting decoders end in a probability map, classifiers in a distribution,
and the caller thresholds them:

    z (quantized: conv / Resize / Gemm output) ──► Sigmoid | Softmax ──► [Reshape | ...] ──► p (output)

Quantization clips z to its calibrated range [lo, hi], and synthetic samples carry no object the model
is sure of: their logits stay small. ViT-S saliency's logit read [-2.05, 2.04] on synthetic samples,
[-5.6, 5.6] on photos (every salient pixel then read 0.89 instead of ~1; heatmap SQNR 15 dB); PP-LCNet's
4-way orientation logits [-0.55, 0.82]: its top class read p = 0.57 where FP32 says 0.93 (BENCHMARKS.md,
session 14). A probability's own range is known without data, [0, 1], and so is the logit span an output
needs to come within one step 1 / (2^b - 1) of 1 (b = the activation bits):

    Sigmoid:            |z| <= L = ln(2^b - 1)                    (5.54 at 8 bits)
                        lo, hi = min(lo, -L), max(hi, L)
    Softmax over K:     z_top - z_others >= ln((K - 1) (2^b - 1))  (6.64 for K = 4)
                        hi = max(hi, lo + ln((K - 1) (2^b - 1)))   (lo: every sample's K - 1 other scores
                                                                    populate it; only the top is short)

The cost is a coarser step on z where the measured range was narrower. Only for a Sigmoid / Softmax (on
its last axis) whose output reaches a graph output through layout ops alone, whose input is a quantized
activation measured on synthetic samples (real calibration data shows the real span). No forward pass;
the report lists the spans (`probability_output_span`).
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import LAYOUT_OPS
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import FLOAT_BITS, CompileState, Range


def _last_axis(node: gs.Node) -> bool:
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    axis = int(node.attrs.get("axis", -1))
    return axis == -1 or (rank is not None and axis == rank - 1)


def output_probability_inputs(graph: gs.Graph) -> list[tuple[str, str, int]]:
    """(input name, "Sigmoid" | "Softmax", classes) of each Sigmoid / last-axis Softmax whose output
    reaches a graph output through LAYOUT_OPS alone (classes: the Softmax axis' size, 0 if unknown)."""
    found: list[tuple[str, str, int]] = []
    for out in graph.outputs:
        t = out
        while t.inputs and t.inputs[0].op in LAYOUT_OPS and t.inputs[0].inputs:
            t = t.inputs[0].inputs[0]
        node = t.inputs[0] if t.inputs else None
        if node is None or node.op not in ("Sigmoid", "Softmax") or not node.inputs:
            continue
        z = node.inputs[0]
        if node.op == "Softmax" and not _last_axis(node):
            continue
        classes = z.shape[-1] if z.shape and isinstance(z.shape[-1], int) else 0
        if z.name not in {f[0] for f in found}:
            found.append((z.name, node.op, classes))
    return found


def logit_span(op: str, classes: int, bits: int) -> float | None:
    """L = ln(2^bits - 1) (Sigmoid) or ln((K - 1)(2^bits - 1)) (Softmax over K > 1 classes, else None)."""
    if op == "Sigmoid":
        return math.log(2 ** bits - 1)
    return math.log((classes - 1) * (2 ** bits - 1)) if classes > 1 else None


def _spanned(r: Range, op: str, span: float) -> Range:
    if op == "Sigmoid":
        return Range(min(r.lo, -span), max(r.hi, span), f"{r.source}+probability-span")
    return Range(r.lo, max(r.hi, r.lo + span), f"{r.source}+probability-span")


class OutputProbabilitySpan(Pass):
    """Analysis: widen the synthetic range of a graph-output Sigmoid / Softmax input to what p needs."""

    name = "OutputProbabilitySpan"

    def run(self, state: CompileState) -> PassResult:
        bits = state.options.act_bits or state.target.default_act_bits
        if bits >= FLOAT_BITS:
            return PassResult(False, "activations float")
        moved = {}
        for z, op, classes in output_probability_inputs(state.graph):
            r, span = state.ranges.get(z), logit_span(op, classes, bits)
            if r is None or span is None or not r.source.startswith("synthetic"):
                continue
            new = _spanned(r, op, span)
            if (new.lo, new.hi) != (r.lo, r.hi):
                state.ranges[z] = new
                moved[z] = {"op": op, "measured": [round(r.lo, 4), round(r.hi, 4)],
                            "to": [round(new.lo, 4), round(new.hi, 4)]}
        if moved:
            state.report.notes["probability_output_span"] = moved
        return PassResult(False, f"{len(moved)} output Sigmoid / Softmax input ranges widened")
