"""The top of a classifier head's pooled features, raised by the shortfall of its scores on synthetic samples.

A global average (GlobalAveragePool, or ReduceMean over every axis after the channels) reduces each
channel of a sample to its spatial mean. Real inputs are spatially consistent: an object or a line
of text excites the same features over much of the image, so a feature's mean over space can reach
far up its range. Synthetic samples (random fields, `dfq_onnx.synth.search`) are not: their features
come and go across the image and average out, so the pooled range measured on them can be a fraction
of the real one (PP-OCR's direction classifier: [-0.27, 0.27] synthetic vs [-0.11, 1.88] on 64 rendered
lines; the clip of that one tensor costs 9 points of accuracy, BENCHMARKS.md issue 17, session 5).

The model says how far: the head computes its scores s = W p + b from the pooled features p, and
`ScoreTopPrior` has already compared the scores' measured top with the BN-statistics prior's top
(the propagated moments' k sigma). The scores are linear in p, so the features fall short by the same
factor as the scores they produce:

    r   = prior_top(s) / hi_s,measured                     (> 1: the scores fall short)
    hi_p = max(hi_p,measured, min(r * hi_p,measured, hi_x,measured)),      lo_p = lo_p,measured

capped at the top of the pool's input x (an average never leaves the range of what it averages, so
no input whose elements lie in x's calibrated range is clipped at p). Only the top moves (as for the
scores): the bottom of a pooled post-activation feature is its activation's floor, which synthetic
samples reach. The same range goes to the tensors that only reshape p (Flatten / Reshape / Squeeze /
Unsqueeze / Identity) when they are quantized separately. Without that evidence (no score range the
prior raised: e.g. a target that keeps a Gemm's graph output float, as ORT CPU does for the ResNets
and EfficientNet-Lite0) nothing moves. No forward pass.

Which pools: those whose features the classifier head reads, i.e. from which a score tensor
(`score_prior.score_tensors`) is reached through reshapes, one linear layer (Gemm / MatMul / Conv)
and its bias Add. A pool inside the network (squeeze-excitation gates) feeds layers whose own ranges
are measured on the same synthetic samples: raising its top alone breaks that consistency (on the
same classifier the gate pool's real range swapped in alone costs 3.9 points, and raising every pool
to its input's top gives 95.6 % where the head's pool alone gives 96.5 %), so those are left as
measured.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from dfq_onnx.passes.score_prior import SCORE_OPS, score_tensors

from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range

RESHAPING = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity")
HEAD_LINEAR = ("Gemm", "MatMul", "Conv")


def _mean_axes(node: gs.Node) -> list[int] | None:
    """Axes a ReduceMean averages (attribute, or constant second input from opset 18), else None."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def is_global_average(node: gs.Node) -> bool:
    """GlobalAveragePool, or ReduceMean over every axis after the channels of a rank >= 3 input."""
    if node.op == "GlobalAveragePool":
        return True
    if node.op != "ReduceMean" or not node.inputs or node.inputs[0].shape is None:
        return False
    rank, axes = len(node.inputs[0].shape), _mean_axes(node)
    return rank >= 3 and axes is not None and sorted(a % rank for a in axes) == list(range(2, rank))


def pooled_tensors(graph: gs.Graph) -> list[tuple[str, str]]:
    """(pooled tensor, the pool's input) for every global average, then each reshaping of a pooled
    tensor with the same input, in graph order."""
    out: list[tuple[str, str]] = []
    source: dict[str, str] = {}
    for node in graph.nodes:
        if not node.inputs or not node.outputs:
            continue
        first = node.inputs[0].name
        if is_global_average(node):
            source[node.outputs[0].name] = first
        elif node.op in RESHAPING and first in source:
            source[node.outputs[0].name] = source[first]
        else:
            continue
        out.append((node.outputs[0].name, source[node.outputs[0].name]))
    return out


def _up(t: gs.Tensor, ops: tuple[str, ...]) -> gs.Tensor:
    """Walk up from `t` through producers in `ops` (data input first) and Adds of a constant."""
    while t.inputs:
        node = t.inputs[0]
        bias = node.op == "Add" and len(node.inputs) == 2 and isinstance(node.inputs[1], gs.Constant)
        if not (node.op in ops or bias) or not node.inputs:
            break
        t = node.inputs[0]
    return t


def head_inputs(graph: gs.Graph) -> dict[str, list[str]]:
    """Tensors the classifier head reads -> the score tensors it computes: up from each score tensor
    through score ops, one linear layer with its bias, then reshapes (every tensor met after the
    linear layer)."""
    table, out = graph.tensors(), {}
    for name in score_tensors(graph):
        t = _up(table[name], SCORE_OPS + RESHAPING)
        node = t.inputs[0] if t.inputs else None
        if node is None or node.op not in HEAD_LINEAR or not node.inputs:
            continue
        t = node.inputs[0]
        out.setdefault(t.name, []).append(name)
        while t.inputs and t.inputs[0].op in RESHAPING and t.inputs[0].inputs:
            t = t.inputs[0].inputs[0]
            out.setdefault(t.name, []).append(name)
    return out


def score_shortfall(notes: dict, scores: list[str]) -> float | None:
    """prior top / measured top of the head's score ranges (ScoreTopPrior's notes), the largest; None
    when no score range of the head had a prior above a positive measured top."""
    found = [v for k, v in notes.items() if k in scores and isinstance(v, dict)]
    ratios = [v["prior_top"] / v["measured"][1] for v in found if 0 < v["measured"][1] < v["prior_top"]]
    return max(ratios, default=None)


class PooledRangeTop(Pass):
    """Analysis: raise the top of a classifier's synthetic pooled-feature ranges by its scores' shortfall."""

    name = "PooledRangeTop"

    def run(self, state: CompileState) -> PassResult:
        head = head_inputs(state.graph)
        pooled = pooled_tensors(state.graph)
        scores = {x: head[p] for p, x in pooled if p in head}
        pairs = [(p, x) for p, x in pooled if x in scores
                 and p in state.ranges and state.ranges[p].source.startswith("synthetic")]
        if not pairs:
            return PassResult(False, "no classifier feature pool with a range from synthetic samples")
        prior = state.report.notes.get("score_top_prior", {})
        notes, raised = {}, 0
        for pooled_name, source in pairs:
            r, x = state.ranges[pooled_name], state.ranges.get(source)
            ratio = score_shortfall(prior, scores[source])
            if x is None or ratio is None:
                notes[pooled_name] = ("skipped: no BN prior above the head's score top" if ratio is None
                                      else f"skipped: the pool's input '{source}' has no measured range")
                continue
            top = max(r.hi, min(x.hi, r.hi * ratio))
            if top > r.hi:
                state.ranges[pooled_name] = Range(r.lo, top, f"{r.source}+pool-top")
                raised += 1
            notes[pooled_name] = {"measured": [r.lo, r.hi], "score_shortfall": ratio, "input": source,
                                  "input_top": x.hi, "top": top}
        state.report.notes["pooled_range_top"] = notes
        return PassResult(False, f"{raised}/{len(pairs)} classifier feature ranges raised")
