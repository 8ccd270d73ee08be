"""The ranges inside a classifier's hidden head, measured again with its global average taken as a maximum.

A classifier whose head has a hidden layer after the global pool (PP-LCNet / MobileNetV3: GAP -> 1x1
Conv -> HardSwish -> FC; a GAP -> Gemm -> ReLU -> Gemm MLP) computes its scores from the pooled
features alone:

    body ──► x [N, C, H, W] ──► GlobalAveragePool ──► p [N, C] ──► linear ──► act ──► ... ──► scores [N, K]

On a real image the features that make its class fire together over much of it (an object, a page of
text), so each channel's spatial mean comes near what the channel reaches where it fires. On a
synthetic random field (`dfq_onnx.synth.search`) a feature fires in a few places and averages out: the
pooled features are a fraction of a real image's (mean 0.05 vs 0.30 on a document-orientation CNN), and
the hidden layer, a sum over hundreds of them, falls short by more: its calibrated range was
[0, 1.3] where real pages reach 11.0 (26 % of its values clipped), PP-LCNet's [-0.72, 0.46] where real
rotated pages reach [-13.8, 0.8] (37 % clipped; 94.7 % agreement with FP32; BENCHMARKS.md, session 19).

The field's spatial maximum is what a feature reaches where it fires, so the head is run a second time
on the same synthetic samples with the pool taken as a maximum (GlobalMaxPool, or ReduceMax over the
same axes), and every quantized tensor of the head, the pooled features included, takes the union of
the two ranges:

    lo_t = min(lo_t,avg, lo_t,max),   hi_t = max(hi_t,avg, hi_t,max)

(on those two models the max-pooled run reads [0, 11.4] and [-6.6, 0.5] at the hidden layers). The
pooled tensor's new top is at most the top of the pool's input, which is calibrated on the same
samples. Which heads: every node reached from the pool's output reads, besides constants and integer
(shape) tensors, only tensors of that region, the region writes graph outputs only through score
tensors [N, K > 1] (`score_prior.score_tensors`), and it holds at least two linear layers (Conv / Gemm /
MatMul with a constant weight). A one-layer head (ResNets, EfficientNet) has no hidden layer and keeps
`PooledRangeTop`'s rule. Only with synthetic calibration, on ranges measured on synthetic samples; one
ORT run of the samples (no views); the report lists the moves (`head_max_ranges`).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from dfq_onnx.passes.calibrate import collect_ranges
from dfq_onnx.passes.pool_range import is_global_average
from dfq_onnx.passes.score_prior import score_tensors

from dfq_onnx.core.graph_utils import is_float, walk
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range

LINEAR = ("Conv", "Gemm", "MatMul")
MAX_OF = {"GlobalAveragePool": "GlobalMaxPool", "ReduceMean": "ReduceMax"}


def _linear(node: gs.Node) -> bool:
    return node.op in LINEAR and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant)


def _region(pool: gs.Node) -> list[gs.Node] | None:
    """The nodes reached from `pool`'s output, if they read nothing else of the network's data."""
    start = pool.outputs[0]
    seen = {id(node): node for node, _ in walk(start, lambda *_: True)}
    made = {id(t) for n in seen.values() for t in n.outputs} | {id(start)}
    for node in seen.values():
        for t in node.inputs:
            if not isinstance(t, gs.Constant) and id(t) not in made and (t.dtype is None or is_float(t)):
                return None
    return list(seen.values())


def hidden_heads(graph: gs.Graph) -> list[tuple[gs.Node, list[str]]]:
    """(global average pool, the tensors of its head: the pooled one first) for every classifier head
    with a hidden layer (module docstring)."""
    scores = set(score_tensors(graph))
    outputs = {t.name for t in graph.outputs}
    heads = []
    for pool in graph.nodes:
        if not (is_global_average(pool) and pool.outputs) or pool.op not in MAX_OF:
            continue
        region = _region(pool)
        if region is None or sum(_linear(n) for n in region) < 2:
            continue
        written = {t.name for n in region for t in n.outputs}
        if not written & outputs or not written & outputs <= scores:
            continue
        heads.append((pool, [pool.outputs[0].name] + [t.name for n in region for t in n.outputs]))
    return heads


def max_pooled(graph: gs.Graph, pools: list[str]) -> gs.Graph:
    """A copy of `graph` whose named global averages are maxima over the same axes."""
    g = graph.copy()
    for node in g.nodes:
        if node.name in pools:
            node.op = MAX_OF[node.op]
    return g


class HeadMaxRanges(Pass):
    """Analysis: widen a hidden classifier head's synthetic ranges to a run with its pool taken as a max."""

    name = "HeadMaxRanges"

    def run(self, state: CompileState) -> PassResult:
        heads = hidden_heads(state.graph)
        tensors = [t for _, ts in heads for t in ts
                   if t in state.ranges and state.ranges[t].source.startswith("synthetic")]
        if not tensors or state.calib is None:
            return PassResult(False, "no classifier head with a hidden layer measured on synthetic samples")
        graph = max_pooled(state.graph, [p.name for p, _ in heads])
        got = collect_ranges(state, state.calib, tensors, "synthetic", graph=graph)
        notes, moved = {}, 0
        for t in tensors:
            r, m = state.ranges[t], got[t]
            lo, hi = min(r.lo, m.lo), max(r.hi, m.hi)
            if (lo, hi) != (r.lo, r.hi):
                state.ranges[t] = Range(lo, hi, f"{r.source}+head-max")
                moved += 1
            notes[t] = {"measured": [r.lo, r.hi], "max_pooled": [m.lo, m.hi], "range": [lo, hi]}
        state.report.notes["head_max_ranges"] = notes
        return PassResult(False, f"{moved}/{len(tensors)} head ranges widened to the max-pooled run "
                                 f"({len(heads)} head{'s' if len(heads) > 1 else ''})")
